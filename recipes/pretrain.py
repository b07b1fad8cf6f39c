"""`accelerate launch recipes/pretrain.py CONFIG.yaml [key=value ...]` (same as `hfspeech pretrain`)."""

import sys

from hfspeech.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))

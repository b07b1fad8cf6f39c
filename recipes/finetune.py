"""`accelerate launch recipes/finetune.py CONFIG.yaml [key=value ...]` (same as `hfspeech finetune`)."""

import sys

from hfspeech.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))

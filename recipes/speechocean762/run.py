"""speechocean762 end to end (see recipe.yaml): python recipes/an4/run.py [--data ../shared/data] [--only RUN ...]"""

import sys
from pathlib import Path

from hfspeech.recipes.small_corpus import main

if __name__ == "__main__":
    sys.exit(main(Path(__file__).with_name("recipe.yaml"), sys.argv[1:]))

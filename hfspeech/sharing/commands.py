"""CLI verb `hfspeech push MODEL_DIR REPO_ID`: upload a complete model directory with a generated card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    push = subparsers.add_parser(
        "push", help="push a model directory (model, processor, LM, k-means, model card) to the Hub",
        description=("Check MODEL_DIR (every missing piece is listed before anything is sent), generate its model "
                     "card (README.md: metadata, evaluation results saved by `hfspeech evaluate --save`, training "
                     "config) and upload everything to REPO_ID in one commit. The Hub is HF_ENDPOINT or "
                     "https://huggingface.co."),
    )
    push.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model directory, e.g. RUN/final")
    push.add_argument("repo_id", metavar="REPO_ID", help="namespace/name of the model repo (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or `hf auth login`)")
    push.add_argument("--commit-message", default=None, help="default: 'Upload <dir> with hfspeech'")
    push.add_argument("--dry-run", action="store_true",
                      help="check the directory and print the files and the model card; send nothing")
    push.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    from .push import PushError, prepare_push, push_model_directory

    if args.dry_run:
        model, card = prepare_push(args.model_dir, args.repo_id)
        print("\n".join([*model.files, "README.md (generated)", "", card]))
        return 0
    try:
        result = push_model_directory(args.model_dir, args.repo_id, private=args.private, token=args.token,
                                      commit_message=args.commit_message)
    except PushError as error:
        print(f"hfspeech push: error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {len(result.files)} files to {result.repo_url} (commit {result.commit_oid})")
    return 0

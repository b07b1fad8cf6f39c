"""`hfspeech <verb>`: argument parsing only; each area registers its own verbs.

Every module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
verbs with ``subparsers.add_parser(...)`` and sets ``func=`` to a handler taking the
parsed ``argparse.Namespace`` and returning an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES: tuple[str, ...] = (
    "hfspeech.modeling.commands",
    "hfspeech.data.commands",
    "hfspeech.decoding.commands",
    "hfspeech.decoding.evaluation_commands",
    "hfspeech.targets.commands",
    "hfspeech.training.commands",
    "hfspeech.sharing.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfspeech",
        description=(
            "Self-supervised speech learning (wav2vec 2.0, HuBERT) in the Hugging Face "
            "ecosystem. Run `hfspeech VERB --help` for the options of each verb."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hfspeech {args.verb}: error: {error}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

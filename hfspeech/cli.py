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
    "hfspeech.labels.commands",
    "hfspeech.training.commands",
    "hfspeech.sharing.commands",
)


class IntermixedArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose verbs take their options anywhere among their positionals.

    ``hfspeech lm build A.txt --order 4 B.txt OUT_DIR`` parses like ``lm build A.txt B.txt OUT_DIR
    --order 4``: a verb's own parser runs ``parse_known_intermixed_args``. Parsers that hold
    sub-commands (``hfspeech``, ``hfspeech lm``) parse as usual and hand the rest to the verb;
    ``add_subparsers`` gives every verb parser this class.
    """

    _intermixing = False

    def _takes_intermixed_arguments(self) -> bool:
        positionals = self._get_positional_actions()
        if any(action.nargs in (argparse.PARSER, argparse.REMAINDER) for action in positionals):
            return False
        return not any(action in positionals for group in self._mutually_exclusive_groups
                       for action in group._group_actions)

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or not self._takes_intermixed_arguments():
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls parse_known_args twice
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = IntermixedArgumentParser(
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

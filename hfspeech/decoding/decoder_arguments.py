"""The decoder options of every decoding verb (`hfspeech lm tune`, `lm decode`, `transcribe`, `evaluate`).

Every option defaults to None: "not given". A verb builds its `DecoderSpec` from what it knows
(the model directory's saved decoder, the LM it was given) and `decoder_overrides` replaces only
the fields given on the command line; the rest are the saved decoder's or `DecoderSpec`'s own
defaults (alpha 0.5, beta 1.0, beam width 100, ...). The backend, when not given, is the saved
decoder's, else flashlight with an LM and greedy without one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .decoders import BACKENDS

# command-line option -> DecoderSpec field
_FIELDS = {"backend": "backend", "alpha": "alpha", "beta": "beta", "beam_width": "beam_width",
           "beam_prune_logp": "beam_prune_logp", "token_min_logp": "token_min_logp",
           "lexicon_lookahead": "lexicon_lookahead", "unigrams": "unigrams_path"}


def add_decoder_arguments(parser: argparse.ArgumentParser, backends: tuple[str, ...] = BACKENDS) -> None:
    """Add ``--backend --alpha --beta --beam-width --beam-prune-logp --token-min-logp --lexicon-lookahead
    --unigrams`` to ``parser`` (all default None, see the module docstring)."""
    parser.add_argument("--backend", choices=backends, default=None,
                        help="beam search implementation (default: the saved decoder's; flashlight with an LM, "
                             "greedy without one)")
    parser.add_argument("--alpha", type=float, default=None, help="LM weight (default: saved value, else 0.5)")
    parser.add_argument("--beta", type=float, default=None, help="word bonus (default: saved value, else 1.0)")
    parser.add_argument("--beam-width", type=int, default=None, help="default: saved value, else 100")
    parser.add_argument("--beam-prune-logp", type=float, default=None, help="default: saved value, else -10")
    parser.add_argument("--token-min-logp", type=float, default=None, help="pyctcdecode only (default -5)")
    parser.add_argument("--lexicon-lookahead", choices=("max", "none"), default=None,
                        help="flashlight only: score partial words by their best unigram (max, the default) or "
                             "not at all (none: better for small closed-grammar LMs)")
    parser.add_argument("--unigrams", type=Path, default=None, help="word list (default: unigrams.txt next to the LM)")


def decoder_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `DecoderSpec` fields given on the command line (``unigrams`` as ``unigrams_path``)."""
    overrides = {}
    for option, spec_field in _FIELDS.items():
        value = getattr(args, option, None)
        if value is not None:
            overrides[spec_field] = str(value) if option == "unigrams" else value
    return overrides

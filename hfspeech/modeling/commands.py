"""CLI verbs of the model family: `hfspeech init` and `hfspeech convert`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..configuration import OBJECTIVES, PRESET_NAMES, SpeechEncoderConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser(
        "init",
        help="write a freshly initialised pretraining model directory",
        description=(
            "Write a freshly initialised SpeechEncoderForPreTraining (config, safetensors weights, "
            "feature extractor) for the given objective and paper size. Fields of the preset can be "
            "replaced with --set KEY=VALUE (YAML values, as in the training configs: --set num_hidden_layers=4)."
        ),
    )
    init.add_argument("output_dir", type=Path, help="directory to create")
    init.add_argument("--objective", choices=OBJECTIVES, required=True)
    init.add_argument("--preset", choices=PRESET_NAMES, default="base")
    init.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field (repeatable)")
    init.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    init.set_defaults(func=run_init)

    convert = subparsers.add_parser(
        "convert",
        help="convert a transformers or fairseq checkpoint to hfspeech (or back)",
        description=(
            "Convert a transformers Wav2Vec2Model/Wav2Vec2ForCTC/Wav2Vec2ForPreTraining/HubertModel/"
            "HubertForCTC directory (with its feature extractor and tokenizer) into an hfspeech "
            "directory; with --to transformers, convert an hfspeech directory back. A fairseq .pt file "
            "(wav2vec2, hubert, wav2vec_ctc, hubert_ctc) is read with a restricted unpickler that loads "
            "tensors and configuration data only."
        ),
    )
    convert.add_argument("source", type=Path, help="source model directory, or a fairseq checkpoint (.pt)")
    convert.add_argument("output_dir", type=Path, help="directory to write")
    convert.add_argument("--to", choices=("hfspeech", "transformers"), default="hfspeech")
    convert.add_argument("--vocab", type=Path, default=None,
                         help="fairseq CTC checkpoints: the dict.ltr.txt the model was fine-tuned with, when the "
                              "checkpoint does not hold its target dictionary")
    convert.add_argument("--ignore-training-options", action="store_true",
                         help="fairseq checkpoints: import even when they set masking options hfspeech does not "
                              "implement (training only; hfspeech's masking is used)")
    convert.set_defaults(func=run_convert)


def parse_overrides(pairs: list[str]) -> dict:
    """Parse ``KEY=VALUE`` strings (YAML values, `hfspeech.overrides`) naming config fields."""
    from ..overrides import parse_overrides as parse_key_values

    overrides = parse_key_values(pairs, "--set")
    valid = set(SpeechEncoderConfig().to_dict())
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"Unknown config field(s) {unknown}; valid fields: {sorted(valid)}.")
    return overrides


def initialise_pretraining_model(output_dir: Path, objective: str, preset: str, overrides: dict | None = None,
                                 seed: int = 0) -> Path:
    """Create and save a new `SpeechEncoderForPreTraining` plus its feature extractor."""
    import torch

    from ..modeling.filterbank import frontend_receptive_field
    from ..modeling.pretraining import SpeechEncoderForPreTraining
    from ..processing import SpeechFeatureExtractor

    config = SpeechEncoderConfig.from_preset(preset, objective=objective, **(overrides or {}))
    torch.manual_seed(seed)
    model = SpeechEncoderForPreTraining(config)
    model.save_pretrained(output_dir)
    SpeechFeatureExtractor(min_num_samples=frontend_receptive_field(config)).save_pretrained(output_dir)
    parameters = sum(p.numel() for p in model.speech_encoder.parameters())
    logger.info("Wrote a %s %s model (%.1fM backbone parameters) to %s", preset, objective, parameters / 1e6, output_dir)
    return output_dir


def run_init(args: argparse.Namespace) -> int:
    initialise_pretraining_model(args.output_dir, args.objective, args.preset, parse_overrides(args.overrides), args.seed)
    print(f"wrote {args.output_dir}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_to_transformers, convert_transformers_checkpoint

    if args.source.is_file():
        from .fairseq_import import convert_fairseq_checkpoint

        if args.to != "hfspeech":
            raise ValueError(f"{args.source} is a file: only fairseq checkpoints (.pt) convert, and only to hfspeech.")
        result = convert_fairseq_checkpoint(args.source, args.output_dir, vocab=args.vocab,
                                            ignore_training_options=args.ignore_training_options)
        for note in result.notes:
            print(f"note: {note}")
        print(f"wrote {args.output_dir} ({result.architecture} from fairseq {result.fairseq_model})")
        return 0
    if args.vocab is not None:
        raise ValueError("--vocab applies to fairseq checkpoints (.pt files) only.")
    if args.to == "transformers":
        convert_to_transformers(args.source, args.output_dir)
    else:
        convert_transformers_checkpoint(args.source, args.output_dir)
    print(f"wrote {args.output_dir}")
    return 0

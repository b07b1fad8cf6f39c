"""CLI verbs `hfspeech pretrain` and `hfspeech finetune` (YAML config + key=value overrides)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    for verb, help_text in (("pretrain", "self-supervised pretraining (wav2vec 2.0 or HuBERT)"),
                            ("finetune", "CTC fine-tuning on labeled audio")):
        parser = subparsers.add_parser(
            verb, help=help_text,
            description=f"{help_text[0].upper() + help_text[1:]}. Reads a YAML config (see recipes/) and applies "
                        "key=value overrides; runs on every process `accelerate launch`/`torchrun` started.")
        parser.add_argument("config", type=Path, help="YAML config file")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config fields")
        parser.set_defaults(func=run_pretrain if verb == "pretrain" else run_finetune)


def load_pretraining_model(args):
    """A new model from a preset (with overrides) or an existing model directory."""
    from ..configuration import PRESET_NAMES, SpeechEncoderConfig
    from ..modeling.pretraining import SpeechEncoderForPreTraining

    if args.model in PRESET_NAMES:
        import torch

        torch.manual_seed(args.seed)
        config = SpeechEncoderConfig.from_preset(args.model, objective=args.objective, **args.model_overrides)
        return SpeechEncoderForPreTraining(config)
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model={args.model!r} is neither a preset {PRESET_NAMES} nor a model directory.")
    return SpeechEncoderForPreTraining.from_pretrained(args.model, **args.model_overrides)


def run_pretrain(namespace: argparse.Namespace) -> int:
    from .acceleration import make_accelerator
    from .arguments import PretrainingArguments, parse_arguments
    from .pretrain_data import build_dev_batches, build_pretraining_batches
    from .pretrain_loop import run_pretraining

    args = parse_arguments(PretrainingArguments, namespace.config, namespace.overrides)
    model = load_pretraining_model(args)
    accelerator = make_accelerator(args.mixed_precision, find_unused_parameters=model.config.layerdrop > 0)
    batches, summary = build_pretraining_batches(args, model.config, accelerator.num_processes, accelerator.process_index)
    dev_batches, dev_summary = build_dev_batches(args, model.config, accelerator.num_processes, accelerator.process_index)
    if accelerator.is_main_process:
        logger.info("Pretraining data: %s", json.dumps(summary))
        if dev_summary:
            logger.info("Held-out data: %s", json.dumps(dev_summary))
    result = run_pretraining(model, batches, args, accelerator, dev_batches)
    if dev_summary:
        result["dev_data"] = dev_summary
    if accelerator.is_main_process:
        print(json.dumps({"output_dir": args.output_dir, "final_model": str(Path(args.output_dir) / "final"),
                          **result}, indent=2, default=str))
    return 0


def run_finetune(namespace: argparse.Namespace) -> int:
    from .arguments import FinetuningArguments, parse_arguments
    from .finetune_loop import run_finetuning

    args = parse_arguments(FinetuningArguments, namespace.config, namespace.overrides)
    result = run_finetuning(args)
    result.pop("train_losses", None)
    print(json.dumps({"output_dir": args.output_dir, "final_model": str(Path(args.output_dir) / "final"), **result},
                     indent=2))
    return 0

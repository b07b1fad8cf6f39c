"""Run configuration: dataclasses read from a YAML file plus ``key=value`` overrides.

Parsing goes through `transformers.HfArgumentParser`, so every field is typed and an
unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from transformers import HfArgumentParser

from ..overrides import parse_overrides

T = TypeVar("T")

MIXED_PRECISION_HELP = ("no, bf16 or fp16 (fp16 scales the loss with a GradScaler and skips overflowing updates; "
                        "on CPUs it runs but is slow: use bf16 there)")
TORCH_COMPILE_HELP = ("torch.compile the model (after loading weights and, with fsdp, sharding; "
                      "before accelerate's prepare)")
VERIFY_DATA_HELP = ("decode every audio file of the data once before the first update (in parallel; see "
                    "hfspeech.data.verification) and stop with the list of corrupt, empty or undecodable files")
DATALOADER_WORKERS_HELP = ("processes decoding and collating batches beside training (0: in the training process); "
                           "crops and speed factors do not depend on it (hfspeech.data.BatchSeeds)")
PIN_MEMORY_HELP = "page-locked batches for faster host-to-GPU copies (used only when training on a GPU)"
FSDP_HELP = ("shard parameters, gradients and optimizer state over the processes with FSDP2 (fully_shard per "
             "Transformer layer; hfspeech.training.sharding), for the large/xlarge presets; needs 2+ processes")
RESHARD_HELP = ("fsdp: free each layer's gathered parameters after its forward and gather them again for the backward "
                "(less memory); false keeps them from forward to backward (one all-gather less per layer)")
TORCH_COMPILE_BACKEND_HELP = ("torch.compile backend: inductor (generated kernels; minutes of compilation on a CPU), "
                              "aot_eager or eager (trace only, for checking a model compiles)")


@dataclass
class PretrainingArguments:
    """Pretraining run (fairseq values as defaults where the papers give them)."""

    output_dir: str = field(metadata={"help": "checkpoints, TensorBoard logs and the final model"})
    model: str = field(default="tiny", metadata={"help": "a preset name (tiny/base/large/xlarge) or a model directory"})
    objective: str = field(default="wav2vec2", metadata={"help": "wav2vec2 or hubert (with a preset)"})
    model_overrides: dict = field(default_factory=dict, metadata={"help": "config fields replacing the preset's"})
    train_data: str = field(default="", metadata={"help": "data source(s), comma-separated (path or librispeech:CONFIG/SPLIT)"})
    train_split: str = field(default="", metadata={"help": "split of a local LibriSpeech/Libri-light source"})
    labels: str = field(default="", metadata={"help": "HuBERT: labels directory written by `hfspeech labels assign`"})
    dev_data: str = field(default="", metadata={"help": "held-out audio on which the objective is scored every eval_steps"})
    dev_labels: str = field(default="", metadata={"help": "HuBERT: labels of dev_data (the same k-means as labels)"})
    streaming: bool = field(default=False, metadata={"help": (
        "stream train_data (datasets IterableDataset: Hub shards decoded lazily) through a bounded shuffle "
        "buffer and duration buckets (StreamingBucketBatcher) instead of indexing it; resume replays the epoch")})
    streaming_buffer: int = field(default=1000, metadata={"help": "streaming: examples bucketed (and shuffled) at once"})
    dataloader_num_workers: int = field(default=0, metadata={"help": DATALOADER_WORKERS_HELP})
    dataloader_pin_memory: bool = field(default=True, metadata={"help": PIN_MEMORY_HELP})
    eval_steps: int = 500
    verify_data: bool = field(default=False, metadata={"help": VERIFY_DATA_HELP})
    max_batch_seconds: float = field(default=87.5, metadata={"help": "audio seconds per micro-batch (fairseq max_tokens 1.4M / 16 kHz)"})
    max_sample_seconds: float = field(default=15.625, metadata={"help": "random crop length (fairseq max_sample_size 250k)"})
    min_sample_seconds: float = field(default=2.0, metadata={"help": "shorter clips are dropped and counted (fairseq 32k)"})
    speed_perturbation: list[float] = field(default_factory=list, metadata={"help": (
        "speed factors drawn per utterance and epoch, audio (and HuBERT labels) resampled on the fly "
        "(Kaldi/ESPnet: [0.9, 1.0, 1.1]); empty = off")})
    learning_rate: float = 5e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    weight_decay: float = 0.01
    warmup_ratio: float = field(default=0.08, metadata={"help": "fraction of max_steps for linear warm-up (fairseq 32k/400k)"})
    max_steps: int = 400_000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 10.0
    mixed_precision: str = field(default="no", metadata={"help": MIXED_PRECISION_HELP})
    torch_compile: bool = field(default=False, metadata={"help": TORCH_COMPILE_HELP})
    torch_compile_backend: str = field(default="inductor", metadata={"help": TORCH_COMPILE_BACKEND_HELP})
    fsdp: bool = field(default=False, metadata={"help": FSDP_HELP})
    fsdp_reshard_after_forward: bool = field(default=True, metadata={"help": RESHARD_HELP})
    save_steps: int = 1000
    keep_checkpoints: int = 2
    logging_steps: int = 10
    seed: int = 1
    resume: bool = field(default=True, metadata={"help": "continue from output_dir/latest when it exists"})
    push_to_hub: bool = False
    hub_model_id: str = ""


@dataclass
class FinetuningArguments:
    """CTC fine-tuning run (fairseq base_10h-style defaults; recipes/an4 for small data from scratch)."""

    output_dir: str = field(metadata={"help": "checkpoints, logs and the final model + processor"})
    model: str = field(metadata={"help": (
        "pretrained hfspeech model directory, or a preset name (tiny/base/large/xlarge) to train from a random "
        "initialisation (then with model_overrides, and nothing frozen)")})
    model_overrides: dict = field(default_factory=dict, metadata={"help": (
        "config fields replacing the preset's or the model directory's (e.g. {feature_frontend: filterbank})")})
    train_data: str = field(default="", metadata={"help": "labeled source(s), comma-separated"})
    train_split: str = field(default="", metadata={"help": "split of a local LibriSpeech/Libri-light source (10min, 1h, ...)"})
    dev_data: str = ""
    dev_split: str = ""
    verify_data: bool = field(default=False, metadata={"help": VERIFY_DATA_HELP})
    dataloader_num_workers: int = field(default=0, metadata={"help": DATALOADER_WORKERS_HELP})
    dataloader_pin_memory: bool = field(default=True, metadata={"help": PIN_MEMORY_HELP})
    tokenizer: str = field(default="", metadata={"help": (
        "directory with a CTC tokenizer (vocab.json) to use, e.g. to share one alphabet across runs; "
        "default: the model directory's, else one built from the training transcripts")})
    learning_rate: float = 5e-5
    lr_phase_ratios: list[float] = field(default_factory=lambda: [0.1, 0.4, 0.5], metadata={"help": (
        "tri-stage schedule: fractions of max_steps for linear warm-up, hold and exponential decay (fairseq)")})
    final_lr_scale: float = field(default=0.05, metadata={"help": "learning rate at the end, as a fraction of the peak"})
    weight_decay: float = 0.0
    max_steps: int = 20_000
    freeze_transformer_steps: int = field(default=10_000, metadata={"help": (
        "updates with only the CTC head trained (ignored, with a warning, for a model without pretraining)")})
    freeze_feature_encoder: bool = field(default=True, metadata={"help": (
        "keep the conv feature encoder fixed (fairseq; ignored, with a warning, for a model without pretraining)")})
    max_batch_seconds: float = 200.0
    speed_perturbation: list[float] = field(default_factory=list, metadata={"help": (
        "speed factors drawn per utterance and epoch, audio resampled on the fly (Kaldi/ESPnet: [0.9, 1.0, 1.1]); "
        "empty = off")})
    mask_time_prob: float = 0.5
    mask_time_length: int = 10
    mask_feature_prob: float = 0.1
    mask_feature_length: int = 64
    layerdrop: float = 0.1
    activation_dropout: float = 0.1
    final_dropout: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 0.0
    eval_steps: int = 500
    average_checkpoints: int = field(default=0, metadata={"help": (
        "final/ = the parameter average of the N evaluations with the best dev WER, or CER by metric_for_best_model "
        "(0 or 1: the last update)")})
    early_stopping_patience: int = field(default=0, metadata={"help": (
        "stop after this many evaluations without a better dev WER (or CER: metric_for_best_model; 0 = run max_steps)")})
    metric_for_best_model: str = field(default="wer", metadata={"help": (
        "the dev metric that ranks evaluations for best/, average_checkpoints and early stopping: wer or cer "
        "(cer where nearly every word is still wrong, so the WER, near 100 %, no longer ranks checkpoints)")})
    save_steps: int = 500
    keep_checkpoints: int = 2
    logging_steps: int = 10
    seed: int = 1
    resume: bool = field(default=True, metadata={"help": "continue from output_dir/latest when it exists"})
    mixed_precision: str = field(default="no", metadata={"help": MIXED_PRECISION_HELP})
    torch_compile: bool = field(default=False, metadata={"help": TORCH_COMPILE_HELP})
    torch_compile_backend: str = field(default="inductor", metadata={"help": TORCH_COMPILE_BACKEND_HELP})
    fsdp: bool = field(default=False, metadata={"help": FSDP_HELP})
    fsdp_reshard_after_forward: bool = field(default=True, metadata={"help": RESHARD_HELP})
    push_to_hub: bool = False
    hub_model_id: str = ""


def parse_arguments(dataclass_type: type[T], config_file: str | Path | None = None,
                    overrides: list[str] | None = None) -> T:
    """Read ``config_file`` (YAML mapping) then apply ``key=value`` overrides (values parsed as YAML).

    Raises ValueError naming unknown keys and listing the valid ones.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.exists():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a YAML mapping of field: value.")
        values.update(loaded)
    values.update(parse_overrides(overrides or []))
    fields = {f.name: f for f in dataclasses.fields(dataclass_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown} for {dataclass_type.__name__}; valid keys: {sorted(fields)}.")
    hints = typing.get_type_hints(dataclass_type)  # (HfArgumentParser replaces string annotations by types)
    for key, value in values.items():
        values[key] = _typed(key, value, hints[key])
    (parsed,) = HfArgumentParser(dataclass_type).parse_dict(values)
    return parsed


def _typed(key: str, value: Any, annotation: Any) -> Any:
    """``value`` as the field's scalar type. YAML reads ``5e-4`` (no dot) as a string; numbers are
    accepted where a float is expected; anything else of the wrong type is refused by name."""
    kind = annotation if annotation in (float, int, bool, str) else None
    if kind is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{key}: expected {kind.__name__}, got {value!r} ({type(value).__name__}).")


def load_sources(specs: str, split: str = "", streaming: bool = False):
    """`hfspeech.data.load_source` for each comma-separated spec, concatenated into one dataset
    (an ``IterableDataset`` with ``streaming``)."""
    import datasets

    from ..data import load_source
    from ..data.records import concatenate_decoded

    parts = [spec.strip() for spec in specs.split(",") if spec.strip()]
    if not parts:
        raise ValueError("No data source given: set train_data (a path or librispeech:CONFIG/SPLIT).")
    loaded = [load_source(spec, split=split or None, streaming=streaming) for spec in parts]
    if len(loaded) == 1:
        return loaded[0]
    if all(isinstance(part, datasets.Dataset) for part in loaded):
        return concatenate_decoded(loaded)
    return datasets.concatenate_datasets(loaded)

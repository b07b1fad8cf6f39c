"""The model card (README.md with YAML metadata) generated from a model directory's own files.

Metadata (``huggingface_hub.ModelCardData``): ``library_name: hfspeech``, ``pipeline_tag``, tags
(objective, CTC, KenLM, k-means), ``datasets`` (Hub ids of the training and evaluation data when
they are Hub data sets), ``metrics`` and a ``model-index`` with the WER/CER of every result saved by
`hfspeech evaluate --save`. The body summarises the architecture, the decoder, the k-means model,
the evaluations and the training configuration (``training_config.json``), and shows how to load
the model. Nothing in it is invented: a section whose source file is absent is left out.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .contents import ModelDirectory
from .evaluations import data_display_name, hub_dataset_id, hub_dataset_split

# Training settings shown in the card, in this order, when training_config.json has them.
TRAINING_FIELDS = (
    "model", "objective", "train_data", "train_split", "dev_data", "labels", "max_steps", "learning_rate",
    "max_batch_seconds", "gradient_accumulation_steps", "freeze_transformer_steps", "freeze_feature_encoder",
    "mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length", "layerdrop",
    "warmup_ratio", "mixed_precision", "seed",
)


def _percent(value: Any) -> float:
    return round(100.0 * float(value), 2)


def _decoder_label(record: dict[str, Any]) -> str:
    backend = record.get("backend", "greedy")
    if not record.get("lm_path"):
        return backend
    return f"{backend} + KenLM (alpha {record.get('alpha', 0):g}, beta {record.get('beta', 0):g})"


def _datasets(model: ModelDirectory) -> list[str]:
    specs = []
    if model.training_config:
        for key in ("train_data", "dev_data"):
            specs += [part.strip() for part in str(model.training_config.get(key) or "").split(",") if part.strip()]
    specs += [record.get("data", "") for record in model.evaluations]
    return sorted({dataset for dataset in map(hub_dataset_id, specs) if dataset})


def _eval_results(model: ModelDirectory) -> list[EvalResult]:
    results = []
    for record in sorted(model.evaluations, key=lambda r: (r.get("data", ""), _decoder_label(r))):
        data = record.get("data", "")
        common = dict(task_type="automatic-speech-recognition", task_name="Speech Recognition",
                      dataset_type=record.get("dataset") or data_display_name(data),
                      dataset_name=data_display_name(data), dataset_split=hub_dataset_split(data))
        decoder = _decoder_label(record)
        results.append(EvalResult(**common, metric_type="wer", metric_value=_percent(record["wer"]),
                                  metric_name=f"WER % ({decoder})"))
        results.append(EvalResult(**common, metric_type="cer", metric_value=_percent(record["cer"]),
                                  metric_name=f"CER % ({decoder})"))
    return results


def card_metadata(model: ModelDirectory, repo_id: str) -> ModelCardData:
    """The YAML metadata of the card."""
    tags = ["hfspeech", "audio", "speech", model.objective]
    if model.is_ctc:
        tags += ["automatic-speech-recognition", "ctc"]
    else:
        tags += ["self-supervised-learning", "pretraining"]
    if model.decoder and model.decoder.get("lm_path"):
        tags += ["kenlm", "n-gram"]
    if model.kmeans:
        tags.append("k-means")
    eval_results = _eval_results(model)
    return ModelCardData(
        library_name="hfspeech",
        pipeline_tag="automatic-speech-recognition" if model.is_ctc else "feature-extraction",
        tags=tags,
        datasets=_datasets(model) or None,
        metrics=["wer", "cer"] if eval_results else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )


def _architecture(model: ModelDirectory) -> list[str]:
    config = model.config
    kind = "CTC speech recognizer" if model.is_ctc else "pretraining model"
    lines = [f"A {config.get('objective', 'wav2vec2')} {kind} trained with "
             "hfspeech (`SpeechEncoder` backbone).", "",
             "| setting | value |", "|---|---|"]
    for key in ("architectures", "objective", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "vocab_size", "feature_layer_norm", "do_stable_layer_norm"):
        if key in config:
            value = ", ".join(config[key]) if isinstance(config[key], list) else config[key]
            lines.append(f"| {key} | {value} |")
    return lines


def _usage(model: ModelDirectory, repo_id: str) -> list[str]:
    if not model.is_ctc:
        return ["```python", "import hfspeech  # registers the Auto* classes",
                "from transformers import AutoModel", f'model = AutoModel.from_pretrained("{repo_id}")', "```"]
    lines = ["```python", "import hfspeech  # registers the Auto* classes",
             "from transformers import AutoModelForCTC, AutoProcessor, pipeline", "",
             f'model = AutoModelForCTC.from_pretrained("{repo_id}")',
             f'processor = AutoProcessor.from_pretrained("{repo_id}")'
             + ("  # SpeechProcessorWithLM: batch_decode runs the KenLM beam search" if model.decoder else ""),
             f'asr = pipeline("automatic-speech-recognition", model="{repo_id}")', 'asr("utterance.flac")["text"]',
             "```", "", f"or `hfspeech transcribe {repo_id.split('/')[-1]}/ AUDIO...` on a downloaded copy."]
    return lines


def _decoder_section(model: ModelDirectory) -> list[str]:
    decoder = model.decoder or {}
    lines = ["## Language model", "", "`decoder_config.json` + `language_model/` hold the KenLM decoder:", "",
             "| setting | value |", "|---|---|"]
    for key in ("backend", "lm_path", "unigrams_path", "alpha", "beta", "beam_width", "beam_prune_logp",
                "token_min_logp", "lexicon_lookahead"):
        if decoder.get(key) is not None:
            lines.append(f"| {key} | {decoder[key]} |")
    return lines


def _kmeans_section(model: ModelDirectory) -> list[str]:
    lines = ["## HuBERT targets (k-means)", "", "| directory | K | feature | dim | fit frames | inertia/frame | backend |",
             "|---|---|---|---|---|---|---|"]
    for folder, meta in sorted(model.kmeans.items()):
        frames = meta.get("num_fit_frames") or 0
        per_frame = f"{meta['inertia'] / frames:.4f}" if frames and meta.get("inertia") is not None else "-"
        lines.append(f"| `{folder}` | {meta.get('num_clusters')} | {meta.get('feature') or '-'} | {meta.get('dim')} "
                     f"| {frames} | {per_frame} | {meta.get('backend')} |")
    lines += ["", "Load with `hfspeech.labels.load_kmeans_models(DIR/kmeans)`."]
    return lines


def _evaluation_section(model: ModelDirectory) -> list[str]:
    lines = ["## Evaluation", "", "Measured with `hfspeech evaluate MODEL DATA --save`:", "",
             "| data | decoder | utterances | WER % | CER % | S / D / I (words) |", "|---|---|---|---|---|---|"]
    for record in sorted(model.evaluations, key=lambda r: (r.get("data", ""), _decoder_label(r))):
        words = record.get("words", {})
        lines.append(f"| {data_display_name(record.get('data', ''))} | {_decoder_label(record)} "
                     f"| {record.get('utterances', '-')} | {_percent(record['wer'])} | {_percent(record['cer'])} "
                     f"| {words.get('substitutions', '-')} / {words.get('deletions', '-')} / {words.get('insertions', '-')} |")
    return lines


def _training_section(model: ModelDirectory) -> list[str]:
    lines = ["## Training", ""]
    if model.training_config:
        lines += ["From `training_config.json`:", "", "| setting | value |", "|---|---|"]
        for key in TRAINING_FIELDS:
            value = model.training_config.get(key)
            if value not in (None, ""):
                lines.append(f"| {key} | {value} |")
    if model.dev_metrics:
        metrics = ", ".join(f"{key.upper()} {_percent(value)} %" for key, value in sorted(model.dev_metrics.items()))
        lines += ["", f"Dev set at the end of training (greedy decoding): {metrics}."]
    return lines


def build_model_card(model: ModelDirectory, repo_id: str) -> ModelCard:
    """The model card of ``model`` for the repo ``repo_id``."""
    sections = [[f"# {repo_id.split('/')[-1]}", ""] + _architecture(model), ["## Usage", ""] + _usage(model, repo_id)]
    if model.decoder:
        sections.append(_decoder_section(model))
    if model.kmeans:
        sections.append(_kmeans_section(model))
    if model.evaluations:
        sections.append(_evaluation_section(model))
    if model.training_config or model.dev_metrics:
        sections.append(_training_section(model))
    sections.append(["## Files", ""] + [f"- `{name}`" for name in model.files])
    body = "\n\n".join("\n".join(section) for section in sections)
    metadata = card_metadata(model, repo_id).to_yaml()
    return ModelCard(f"---\n{metadata}\n---\n\n{body}\n\n*Card generated by `hfspeech push`.*\n")

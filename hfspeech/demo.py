"""`make demo`: the whole path on speech synthesised on this machine, CPU, minutes.

    python -m hfspeech.demo [--output runs/demo] [--quick]

Stages (each cached in OUTPUT/<stage>/result.json, so a re-run reuses finished ones):
  1. corpus    flite speaks spoken-command sentences (3 training voices, 1 held-out dev voice)
               with phone alignments                          -> hfspeech.demo_corpus
               plus a second test set: new sentences (none in the training transcripts)
               spoken by the training voices
  2. labels    39-dim MFCC -> k-means K=100 -> frame labels; PNMI against the phone alignments
  3. pretrain  HuBERT pretraining of a small model on those labels
  4. finetune  CTC fine-tuning from the HuBERT model on the training transcripts
  5. lm        KenLM 4-gram on the training transcripts
  6. decode    WER greedy vs beam search with the 4-gram LM, on the held-out voice (dev) and
               on the training voices' new sentences (seen)
It ends with a table (WER greedy vs LM, PNMI, time per stage) and the model directory.
The numbers are whatever this run measures; the model is small and trained for minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from .stages import Stages

logger = logging.getLogger("hfspeech.demo")

# A small model that learns in CPU-minutes (BASE is 12 x 768; the code is the same). Pre-LN
# with layer-norm conv blocks (the LARGE layout): from random init the post-LN BASE layout
# stayed on the CTC blank plateau for our whole CPU budget (in transformers too).
DEMO_MODEL = dict(
    conv_dim=[64] * 7, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_hidden_layers=4,
    num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4, layer_norm_first=True, feat_extract_norm="layer",
    hubert_num_clusters=[100], label_rate=100, hubert_final_dim=64, layerdrop=0.0, mask_time_length=5,
)
DEMO_FORMAT = 2  # bump when a stage's outputs change meaning (cached stages of other formats are redone)
FULL = dict(train_sentences=160, dev_sentences=40, seen_sentences=30, pretrain_steps=150, finetune_steps=1600,
            beam_width=32, finetune_batch_seconds=20.0)
QUICK = dict(train_sentences=24, dev_sentences=6, seen_sentences=1, pretrain_steps=4, finetune_steps=6, beam_width=8,
             finetune_batch_seconds=20.0)


def stage_corpus(directory: Path, settings: dict) -> dict:
    import random

    from .demo_corpus import TRAIN_VOICES, build_corpus, build_split

    summary = build_corpus(directory, settings["train_sentences"], settings["dev_sentences"])
    # Speaker-dependent test: the training voices on sentences they were never trained on.
    trained = frozenset((directory / "train_transcripts.txt").read_text().splitlines())
    summary["seen"] = build_split(directory, "seen", TRAIN_VOICES, settings["seen_sentences"], random.Random(1), trained)
    return summary


def stage_labels(directory: Path, corpus: Path) -> dict:
    from .targets import fit_label_sets, assign_label_sets, measure_quality, read_label_directory, read_phn_directory

    fit_label_sets(str(corpus / "train"), "mfcc", [100], directory / "kmeans", backend="torch", seed=0)
    metadata = assign_label_sets(directory / "kmeans", str(corpus / "train"), directory / "labels")
    _, ids, label_sets = read_label_directory(directory / "labels")
    report, _, _ = measure_quality(dict(zip(ids, label_sets[100])), read_phn_directory(corpus / "alignments"),
                                   metadata.label_rate)
    return {"label_rate": metadata.label_rate, "pnmi": report.pnmi, "phone_purity": report.phone_purity,
            "cluster_purity": report.cluster_purity, "frames": report.num_frames}


def stage_pretrain(directory: Path, corpus: Path, labels: Path, settings: dict) -> dict:
    from accelerate import Accelerator

    from .configuration import SpeechEncoderConfig
    from .modeling.pretraining import SpeechEncoderForPreTraining
    from .training.arguments import PretrainingArguments
    from .training.pretrain_data import build_pretraining_batches
    from .training.pretrain_loop import run_pretraining

    import torch

    args = PretrainingArguments(
        output_dir=str(directory), model="tiny", objective="hubert", model_overrides=DEMO_MODEL,
        train_data=str(corpus / "train"), labels=str(labels), max_batch_seconds=40.0, max_sample_seconds=5.0,
        min_sample_seconds=1.0, learning_rate=1e-3, max_steps=settings["pretrain_steps"],
        save_steps=max(1, settings["pretrain_steps"]), logging_steps=10, resume=True)
    torch.manual_seed(0)
    model = SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset("tiny", objective="hubert", **DEMO_MODEL))
    accelerator = Accelerator(cpu=True)
    batches, summary = build_pretraining_batches(args, model.config)
    result = run_pretraining(model, batches, args, accelerator)
    return {"data": summary, "final_metrics": result["metrics"], "model": str(directory / "final")}


def stage_finetune(directory: Path, corpus: Path, pretrained: Path, settings: dict) -> dict:
    from .training.arguments import FinetuningArguments
    from .training.finetune_loop import run_finetuning

    result = run_finetuning(FinetuningArguments(
        output_dir=str(directory), model=str(pretrained), train_data=str(corpus / "train"), dev_data=str(corpus / "dev"),
        learning_rate=2e-3, max_steps=settings["finetune_steps"], freeze_transformer_steps=0,
        freeze_feature_encoder=False, max_batch_seconds=settings["finetune_batch_seconds"], eval_steps=max(1, settings["finetune_steps"] // 3),
        save_steps=10**9, mask_time_prob=0.05, mask_time_length=5, mask_feature_prob=0.0, layerdrop=0.0))
    losses = result.pop("train_losses")
    return {**result, "first_loss": losses[0], "last_loss": losses[-1], "model": str(directory / "final")}


def stage_lm(directory: Path, corpus: Path, model_dir: Path) -> dict:
    from .decoding import CTCVocabulary, build_language_model
    from .processing import CharacterCTCTokenizer

    vocabulary = CTCVocabulary.from_tokenizer(CharacterCTCTokenizer.from_pretrained(model_dir))
    files = build_language_model([corpus / "train_transcripts.txt"], directory, vocabulary, order=4, line_per_sentence=True)
    return {"directory": str(directory), "order": files.order, "sentences": files.num_sentences,
            "unigrams": files.num_unigrams}


def stage_decode(directory: Path, corpus: Path, model_dir: Path, lm_dir: Path, settings: dict) -> dict:
    """WER/CER greedy vs LM beam on the held-out voice (``dev``, top-level keys) and, when the corpus
    has it, on new sentences spoken by the training voices (``seen``)."""
    import torch

    from .data import TextNormalizer, load_source
    from .decoding import CTCVocabulary, DecoderSpec, build_decoder, error_report
    from .modeling.models import SpeechEncoderForCTC
    from .processing import SpeechProcessor

    processor = SpeechProcessor.from_pretrained(model_dir)
    model = SpeechEncoderForCTC.from_pretrained(model_dir).eval()
    normalizer = TextNormalizer()
    labels = CTCVocabulary.from_tokenizer(processor.tokenizer).labels
    greedy = build_decoder(DecoderSpec(labels=labels, backend="greedy"))
    beam = build_decoder(DecoderSpec(labels=labels, backend="pyctcdecode", lm_path=str(lm_dir),
                                     beam_width=settings["beam_width"]))

    def evaluate(split: str) -> dict:
        references, greedy_texts, lm_texts = [], [], []
        audio_seconds, decode_seconds = 0.0, 0.0
        for example in load_source(str(corpus / split)):
            inputs = processor(audio=example["audio"], sampling_rate=16000, return_tensors="pt")
            with torch.no_grad():
                log_probs = torch.log_softmax(model(**inputs).logits[0], dim=-1).numpy()
            began = time.perf_counter()
            greedy_texts.append(greedy.decode(log_probs).text)
            lm_texts.append(beam.decode(log_probs).text)
            decode_seconds += time.perf_counter() - began
            references.append(normalizer(example["text"], example["id"]))
            audio_seconds += example["duration"]
        greedy_report, lm_report = error_report(references, greedy_texts), error_report(references, lm_texts)
        examples = [{"reference": r, "greedy": g, "lm": l} for r, g, l in list(zip(references, greedy_texts, lm_texts))[:3]]
        return {"utterances": len(references), "wer_greedy": greedy_report.wer, "cer_greedy": greedy_report.cer,
                "wer_lm": lm_report.wer, "cer_lm": lm_report.cer, "decoding_rtf": decode_seconds / audio_seconds,
                "examples": examples}

    result = evaluate("dev")
    if (corpus / "seen" / "metadata.csv").exists():
        result["seen"] = evaluate("seen")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (for the test suite)")
    parser.add_argument("--threads", type=int, default=1, help=(
        "torch threads; the demo model is small, so more threads gain little and, on a machine "
        "busy with other jobs, oversubscribed threads made steps up to 10x slower"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    settings = QUICK if args.quick else FULL
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results, model_dir = run_stages(args.output, settings)
    finally:  # a caller's (e.g. the test suite's) thread setting is left as it was
        torch.set_num_threads(previous_threads)
    (args.output / "summary.json").write_text(json.dumps(results, indent=2))
    print(format_summary(results, model_dir))
    return 0


def run_stages(output: Path, settings: dict) -> tuple[dict, Path]:
    """Every stage in order, each reused when its result.json exists and was made with the same
    settings (once one stage runs again, every later one does too); returns results and the model dir."""
    corpus = output / "corpus"
    stages = Stages(output, {"format": DEMO_FORMAT, "settings": settings, "model": DEMO_MODEL})
    chain: list[str] = []

    def stage(name: str, function: Callable[[Path], dict[str, Any]]) -> dict:
        result = stages.run(name, function, after=chain[-1:])
        chain.append(name)
        return result

    stage("corpus", lambda d: stage_corpus(d, settings))
    stage("labels", lambda d: stage_labels(d, corpus))
    pretrained = Path(stage("pretrain", lambda d: stage_pretrain(d, corpus, output / "labels" / "labels", settings))["model"])
    model_dir = Path(stage("finetune", lambda d: stage_finetune(d, corpus, pretrained, settings))["model"])
    stage("lm", lambda d: stage_lm(d, corpus, model_dir))
    stage("decode", lambda d: stage_decode(d, corpus, model_dir, output / "lm", settings))
    return stages.results, model_dir


def format_summary(results: dict, model_dir: Path) -> str:
    decode, labels, corpus = results["decode"], results["labels"], results["corpus"]
    lines = [
        "",
        "hfspeech demo — synthesised spoken commands "
        f"({corpus['train']['utterances']} train utterances / {corpus['train']['minutes']:.1f} min, "
        f"{decode['utterances']} dev utterances from a held-out voice)",
        "",
        f"  dev WER, greedy CTC        {100 * decode['wer_greedy']:6.1f} %   (CER {100 * decode['cer_greedy']:.1f} %)",
        f"  dev WER, 4-gram LM beam    {100 * decode['wer_lm']:6.1f} %   (CER {100 * decode['cer_lm']:.1f} %)",
    ]
    seen = decode.get("seen")
    if seen:  # absent when the corpus has no "seen" split
        lines += [
            f"  seen voices, new sentences ({seen['utterances']} utterances):",
            f"    WER, greedy CTC          {100 * seen['wer_greedy']:6.1f} %   (CER {100 * seen['cer_greedy']:.1f} %)",
            f"    WER, 4-gram LM beam      {100 * seen['wer_lm']:6.1f} %   (CER {100 * seen['cer_lm']:.1f} %)",
        ]
    lines += [
        f"  PNMI of MFCC K=100 labels  {labels['pnmi']:6.3f}     (phone purity {labels['phone_purity']:.3f}, "
        f"cluster purity {labels['cluster_purity']:.3f})",
        f"  fine-tuning CTC loss       {results['finetune']['first_loss']:.2f} -> {results['finetune']['last_loss']:.2f}",
        "",
        "  stage       seconds",
    ]
    lines += [f"  {name:<10} {results[name]['seconds']:8.1f}" for name in ("corpus", "labels", "pretrain", "finetune", "lm", "decode")]
    lines += ["", f"  model directory: {model_dir}  (transformers.pipeline('automatic-speech-recognition', model=...))"]
    if decode.get("examples"):
        example = decode["examples"][0]
        lines += [f"  e.g. reference: {example['reference']}", f"       greedy:    {example['greedy']}",
                  f"       with LM:   {example['lm']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

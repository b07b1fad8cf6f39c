"""One labeled corpus end to end: split, fine-tuning from scratch and from our pretraining, LM, WER.

Stages under ``output`` (``recipes/an4/recipe.yaml``, ``recipes/speechocean762/recipe.yaml``):

=======================  =====================================================================
``split``                speaker-disjoint ``train.tsv`` / ``dev.tsv`` and ``train_<subset>.tsv``
                         label subsets (``hfspeech data split``)
``tokenizer``            one character vocabulary from the training transcripts, shared by every run
(pretraining pool)       the models named by the runs, from ``pretraining`` (`pretraining_pool`)
``finetune/INIT-LABELS`` CTC fine-tuning (``finetune`` config) from INIT (``random`` or a pool
                         model) on LABELS (``all`` or a subset), the same updates for every INIT;
                         a run with ``finetune`` overrides of the config is named by its ``name``
``lm``                   KenLM ``lm.order``-gram on the training transcripts
``evaluate/INIT-LABELS`` dev WER/CER greedy and with the LM (alpha/beta tuned on dev)
=======================  =====================================================================

and ``summary.md``: one table of every run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ..stages import Stages
from . import DEFAULT_DATA, load_recipe_yaml, require, scaled

logger = logging.getLogger(__name__)

INITS = ("random", "hubert_iter1", "hubert_iter2", "wav2vec2")


@dataclasses.dataclass(frozen=True)
class Run:
    """One fine-tuning: from ``init`` on the ``labels`` subset (``all`` = the whole training split),
    with the recipe's fine-tuning config or, when ``overrides`` (a tuple of (key, value) pairs) is
    given, that config with these keys replaced; ``label`` names such a run."""

    init: str
    labels: str
    overrides: tuple[tuple[str, Any], ...] = ()
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or f"{self.init}-{self.labels}"

    def config(self, base: dict[str, Any]) -> dict[str, Any]:
        """The fine-tuning config of this run: ``base`` (the recipe's) with the run's overrides."""
        return {**base, **dict(self.overrides)}


def parse_runs(entries: list[Any], subsets: dict[str, float], source: str | Path) -> list[Run]:
    """``runs:`` entries -> runs, checked: ``"init/labels"`` strings or ``{init, labels}`` mappings,
    optionally with ``finetune`` (keys of the fine-tuning config to replace) and then a ``name``."""
    runs = []
    for entry in entries:
        init, labels = (entry["init"], entry["labels"]) if isinstance(entry, dict) else str(entry).split("/", 1)
        if init not in INITS:
            raise ValueError(f"{source}: run {entry!r}: init must be one of {INITS}")
        if labels != "all" and labels not in subsets:
            raise ValueError(f"{source}: run {entry!r}: labels must be 'all' or a subset of split.subsets "
                             f"({sorted(subsets)})")
        overrides = dict(entry.get("finetune") or {}) if isinstance(entry, dict) else {}
        label = entry.get("name") if isinstance(entry, dict) else None
        if overrides and not label:
            raise ValueError(f"{source}: run {entry!r} changes the fine-tuning config; give it a `name` "
                             f"(e.g. {init}-{labels}-long) so its stages do not mix with {init}-{labels}")
        runs.append(Run(init, labels, tuple(sorted(overrides.items())), label))
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: two runs share a name ({sorted({n for n in names if names.count(n) > 1})})")
    if not runs:
        raise ValueError(f"{source}: no runs listed")
    return runs


def _transcripts(manifest: str) -> list[str]:
    return [row["text"] for row in csv.DictReader(open(manifest, newline="", encoding="utf-8"), delimiter="\t")]


def build_tokenizer(directory: Path, train_manifest: str) -> dict[str, Any]:
    """The corpus' character vocabulary (from the normalised training transcripts)."""
    from ..data import TextNormalizer
    from ..processing import CharacterCTCTokenizer

    normalizer = TextNormalizer()
    tokenizer = CharacterCTCTokenizer.from_transcripts([normalizer(text) for text in _transcripts(train_manifest)])
    tokenizer.save_pretrained(directory)
    return {"tokenizer": str(directory), "vocabulary_size": len(tokenizer)}


def finetune(directory: Path, config_file: str | Path, run: Run, split: dict[str, Any], tokenizer: str,
             init_model: str | None, scale: float, dataloader_num_workers: int | None = None) -> dict[str, Any]:
    """``hfspeech finetune CONFIG`` for one run (from the config's preset, or from ``init_model``);
    ``dataloader_num_workers`` replaces the config's value."""
    from ..training.arguments import FinetuningArguments, parse_arguments
    from ..training.finetune_loop import run_finetuning

    # the run's overrides as ``key=value`` (JSON is YAML), so unknown keys and wrong types are refused by name
    args = parse_arguments(FinetuningArguments, config_file, [f"{k}={json.dumps(v)}" for k, v in run.overrides])
    train = split["manifests"]["train" if run.labels == "all" else f"train_{run.labels}"]["path"]
    args = dataclasses.replace(
        args, output_dir=str(directory), train_data=train, dev_data=split["manifests"]["dev"]["path"],
        tokenizer=tokenizer, max_steps=scaled(args.max_steps, scale), eval_steps=scaled(args.eval_steps, scale),
        save_steps=scaled(args.save_steps, scale),
        dataloader_num_workers=args.dataloader_num_workers if dataloader_num_workers is None else dataloader_num_workers)
    if init_model is not None:  # the pretrained model brings its own shape
        args = dataclasses.replace(args, model=init_model, model_overrides={})
    result = run_finetuning(args)
    losses = result.pop("train_losses")
    return {**result, "model": str(directory / "final"), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None}


def build_lm(directory: Path, tokenizer: str, train_manifest: str, order: int) -> dict[str, Any]:
    """A word n-gram of the training transcripts (one sentence per line), in the tokenizer's alphabet."""
    from ..decoding import CTCVocabulary, build_language_model
    from ..processing import CharacterCTCTokenizer

    vocabulary = CTCVocabulary.from_tokenizer(CharacterCTCTokenizer.from_pretrained(tokenizer))
    transcripts = directory / "train_transcripts.txt"
    transcripts.write_text("\n".join(_transcripts(train_manifest)) + "\n")
    files = build_language_model([transcripts], directory / "lm", vocabulary, order=order, line_per_sentence=True)
    return {"lm": str(directory / "lm"), "order": files.order, "words": files.num_unigrams,
            "sentences": files.num_sentences}


def evaluate(directory: Path, model_dir: str, dev_manifest: str, lm_dir: str, trials: int, beam_width: int,
             test_manifest: str | None = None) -> dict[str, Any]:
    """WER/CER greedy and with the LM on ``dev_manifest``, alpha/beta tuned there (``hfspeech lm tune``);
    with ``test_manifest`` also both on it, with the weights tuned on dev (``result["test"]``)."""
    from ..decoding import DecoderSpec
    from ..decoding.evaluation import evaluate_emissions
    from ..decoding.inference import compute_emissions, load_ctc_model
    from ..decoding.tuning import tune_lm_weights

    loaded = load_ctc_model(model_dir)

    def scores(manifest: str, tuned=None) -> dict[str, Any]:
        cache = compute_emissions(loaded, manifest, require_transcripts=True)
        labels, blank = cache.vocabulary.labels, cache.vocabulary.blank_index
        greedy = evaluate_emissions(cache, DecoderSpec(labels, "greedy", blank))
        spec = DecoderSpec(labels, "flashlight", blank, lm_path=lm_dir, beam_width=beam_width,
                           seconds_per_frame=cache.seconds_per_frame)
        if tuned is None:
            tuned = tune_lm_weights(cache, spec, num_trials=trials, seed=0)
            tuned.to_json(directory / "lm_tuning.json")
        with_lm = evaluate_emissions(cache, tuned.apply(spec))
        examples = [{"reference": r, "greedy": g.text, "lm": l.text} for r, g, l in
                    list(zip(cache.references, greedy.hypotheses, with_lm.hypotheses))[:3]]
        return {"utterances": len(cache.references), "wer_greedy": greedy.report.wer, "cer_greedy": greedy.report.cer,
                "wer_lm": with_lm.report.wer, "cer_lm": with_lm.report.cer, "alpha": tuned.alpha, "beta": tuned.beta,
                "lexicon_lookahead": tuned.lexicon_lookahead, "examples": examples}, tuned

    result, tuned = scores(dev_manifest)
    if test_manifest is not None:
        result["test"] = scores(test_manifest, tuned)[0]
    return result


def run_recipe(recipe_file: str | Path, data: str | Path = DEFAULT_DATA, output: str | Path | None = None,
               scale: float = 1.0, only: list[str] | None = None) -> dict[str, Any]:
    """Run (or reuse) every stage of a corpus recipe; returns the stage results and writes ``summary.md``.

    Args:
        recipe_file: ``recipes/<name>/recipe.yaml``.
        data: the data folder ``${data}`` stands for.
        output: where the stages go (default: the recipe's ``output``).
        scale: multiplies every update count (a smoke test: 0.01).
        only: run names (``INIT-LABELS``) to run instead of every listed run.
    """
    from ..data.splits import write_split
    from .pretraining_pool import run_pool

    recipe = load_recipe_yaml(recipe_file, data)
    output = Path(output or require(recipe, "output", recipe_file))
    split_settings = dict(require(recipe, "split", recipe_file))
    subsets = dict(split_settings.get("subsets", {}))
    runs = parse_runs(require(recipe, "runs", recipe_file), subsets, recipe_file)
    if only:
        unknown = sorted(set(only) - {run.name for run in runs})
        if unknown:
            raise ValueError(f"{recipe_file}: no run named {unknown}; listed: {[run.name for run in runs]}")
        runs = [run for run in runs if run.name in only]
    finetune_config = require(recipe, "finetune", recipe_file)
    lm_settings = {"order": 4, **dict(recipe.get("lm", {}))}
    evaluation = {"trials": 30, "beam_width": 100, **dict(recipe.get("evaluation", {}))}
    stages = Stages(output, {"recipe": str(recipe_file), "scale": scale})
    split = stages.run("split", lambda d: write_split(
        require(recipe, "source", recipe_file), d, int(require(split_settings, "dev_speakers", recipe_file)), subsets,
        int(split_settings.get("seed", 0))), settings=split_settings)
    train_manifest = split["manifests"]["train"]["path"]
    tokenizer = stages.run("tokenizer", lambda d: build_tokenizer(d, train_manifest), after=["split"])["tokenizer"]
    wanted = tuple(sorted({run.init for run in runs} - {"random"}))
    models: dict[str, dict[str, Any]] = {}
    if wanted:
        pool_file = require(recipe, "pretraining", recipe_file)
        _check_held_out(recipe, recipe_file, pool_file, data)
        pool = run_pool(pool_file, data, scale=scale, wanted=wanted)
        models = {name: pool[name] for name in wanted}
    lm = stages.run("lm", lambda d: build_lm(d, tokenizer, train_manifest, int(lm_settings["order"])),
                    settings=lm_settings, after=["tokenizer"])
    base_config = load_recipe_yaml(finetune_config, data)
    table = []
    for run in runs:
        steps = scaled(int(run.config(base_config).get("max_steps", 1)), scale)
        pretrained = models.get(run.init)  # (its stage result: a re-run pretraining re-runs the fine-tuning)
        init_model = pretrained["model"] if pretrained else None
        trained = stages.run(f"finetune/{run.name}", lambda d, run=run, init_model=init_model: finetune(
            d, finetune_config, run, split, tokenizer, init_model, scale),
            settings={"config": run.config(base_config), "init": run.init, "labels": run.labels,
                      "pretraining": None if pretrained is None else {k: pretrained[k] for k in ("model", "seconds")}},
            after=["tokenizer"], work=("finetune update", steps))
        scores = stages.run(f"evaluate/{run.name}", lambda d, trained=trained: evaluate(
            d, trained["model"], split["manifests"]["dev"]["path"], lm["lm"], int(evaluation["trials"]),
            int(evaluation["beam_width"])), settings=evaluation, after=[f"finetune/{run.name}", "lm"])
        table.append((run, trained, scores))
    summary = format_summary(recipe.get("name", Path(recipe_file).parent.name), split, table, int(lm_settings["order"]))
    (output / "summary.md").write_text(summary)
    print(summary)
    return stages.results


def _check_held_out(recipe: dict[str, Any], recipe_file: str | Path, pool_file: str | Path,
                    data: str | Path) -> None:
    """The pool must hold this corpus' dev speakers out (same source and split), or pretraining sees the dev audio."""
    from .pretraining_pool import corpus_split_settings

    pool = load_recipe_yaml(pool_file, data)
    held_out = [corpus_split_settings(path, data) for path in require(pool, "held_out", pool_file)]
    split = dict(recipe["split"])
    mine = {"source": recipe["source"], "dev_speakers": int(split["dev_speakers"]), "seed": int(split.get("seed", 0))}
    if not any({key: entry[key] for key in mine} == mine for entry in held_out):
        raise ValueError(f"{pool_file} does not hold out the dev speakers of {recipe_file}: its held_out list must "
                         f"name a recipe with the same source and split ({mine}), or pretraining sees the dev audio")


def format_summary(name: str, split: dict[str, Any], table: list[tuple[Run, dict, dict]], order: int = 4) -> str:
    manifests = split["manifests"]
    lines = [f"# {name}: dev WER (speaker-disjoint dev set: {manifests['dev']['utterances']} utterances, "
             f"{manifests['dev']['speakers']} speaker(s), {60 * manifests['dev']['hours']:.1f} min)", "",
             f"| run | init | labels | updates | WER greedy | WER {order}-gram LM | CER greedy | CER LM | fine-tuning min |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for run, trained, scores in table:
        lines.append(f"| {run.name} | {run.init} | {run.labels} | {trained['updates']} | {100 * scores['wer_greedy']:.1f} | "
                     f"{100 * scores['wer_lm']:.1f} | {100 * scores['cer_greedy']:.1f} | {100 * scores['cer_lm']:.1f} | "
                     f"{trained['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(recipe_file: str | Path, argv: list[str] | None = None) -> int:
    """``recipes/<name>/run.py``: parse ``--data``, ``--output``, ``--scale``, ``--only`` and run."""
    import argparse

    parser = argparse.ArgumentParser(description=f"Run {recipe_file} (cached, resumable stages).")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the data folder ${data} stands for")
    parser.add_argument("--output", default=None, help="stage directory (default: the recipe's output)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every update count (0.01: smoke test)")
    parser.add_argument("--only", nargs="*", default=None, metavar="INIT-LABELS", help="run only these fine-tunings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the small models gain little from more)")
    args = parser.parse_args(argv)
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    run_recipe(recipe_file, args.data, args.output, args.scale, args.only)
    return 0


__all__ = ["INITS", "Run", "format_summary", "main", "parse_runs", "run_recipe"]

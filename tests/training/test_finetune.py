"""CTC fine-tuning loop and the pretrain/finetune CLI on real AN4 audio (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from hfspeech.cli import main as cli_main
from hfspeech.modeling.commands import initialise_pretraining_model
from hfspeech.training.arguments import FinetuningArguments
from hfspeech.training.finetune_loop import run_finetuning
from helpers import FIXTURES, ROOT

AN4 = str(FIXTURES / "an4")
FILE = Path(AN4) / "fash" / "an255-fash-b.flac"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny wav2vec 2.0 model after two pretraining updates (so fine-tuning may freeze it)."""
    recipe = ROOT / "recipes" / "tiny" / "pretrain_wav2vec2.yaml"
    output = tmp_path_factory.mktemp("pretrained")
    assert cli_main(["pretrain", str(recipe), f"output_dir={output}", "max_steps=2", f"train_data={AN4}"]) == 0
    return output / "final"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A randomly initialised model directory (`hfspeech init`)."""
    directory = tmp_path_factory.mktemp("init") / "model"
    initialise_pretraining_model(directory, "wav2vec2", "tiny")
    return directory


def finetune(pretrained: Path, output: Path, **overrides) -> dict:
    fields = dict(output_dir=str(output), model=str(pretrained), train_data=AN4, dev_data=AN4, learning_rate=2e-3,
                  max_steps=30, freeze_transformer_steps=3, max_batch_seconds=8.0, eval_steps=15, save_steps=15,
                  mask_time_prob=0.05, mask_feature_prob=0.0, layerdrop=0.0, seed=3)
    fields.update(overrides)
    return run_finetuning(FinetuningArguments(**fields))


def test_finetuning_learns_and_writes_a_pipeline_ready_directory(pretrained, tmp_path):
    result = finetune(pretrained, tmp_path / "run")
    losses = result["train_losses"]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses
    final = tmp_path / "run" / "final"
    assert json.loads((final / "dev_metrics.json").read_text()).keys() == {"wer", "cer"}
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
    recognizer = transformers.pipeline("automatic-speech-recognition", model=str(final))
    assert isinstance(recognizer(str(FILE))["text"], str)


def test_backbone_is_frozen_for_the_first_updates(pretrained, tmp_path):
    finetune(pretrained, tmp_path / "run", max_steps=3, freeze_transformer_steps=3, eval_steps=100)
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    backbone = [key for key in after if key.startswith("speech_encoder.") and not key.endswith("masked_spec_embed")]
    assert backbone
    for key in backbone:
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0, msg=key)
    assert "lm_head.weight" in after  # the head exists and was trained from scratch


def test_pretraining_records_its_updates_in_the_config(pretrained, fresh):
    assert json.loads((pretrained / "config.json").read_text())["num_pretraining_updates"] == 2
    assert json.loads((fresh / "config.json").read_text())["num_pretraining_updates"] == 0


def test_a_model_without_pretraining_is_not_frozen(fresh, tmp_path, caplog):
    """Frozen random weights have nothing to give: the loop warns and trains every parameter."""
    with caplog.at_level("WARNING", logger="hfspeech.training.finetune_loop"):
        finetune(fresh, tmp_path / "run", max_steps=2, freeze_transformer_steps=2, eval_steps=100)
    assert "no self-supervised pretraining" in caplog.text and "freeze_transformer_steps: 0" in caplog.text
    before = load_file(str(fresh / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    for key in ("speech_encoder.feature_encoder.conv_layers.0.conv.weight",
                "speech_encoder.encoder.layers.0.attention.q_proj.weight"):
        assert not torch.equal(after[key], before[key]), key


def test_a_preset_name_trains_from_scratch_with_overrides(tmp_path):
    result = finetune("tiny", tmp_path / "run", max_steps=2, eval_steps=2, freeze_transformer_steps=0,
                      freeze_feature_encoder=False, model_overrides={"feature_frontend": "filterbank",
                                                                      "num_mel_bins": 40})
    config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert config["feature_frontend"] == "filterbank" and config["num_mel_bins"] == 40
    assert config["num_pretraining_updates"] == 0 and set(result["final"]) == {"wer", "cer"}
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        finetune("no-such-model", tmp_path / "bad", max_steps=1)


def test_finetuning_refuses_unlabeled_data(pretrained, tmp_path):
    unlabeled = tmp_path / "audio"
    unlabeled.mkdir()
    (unlabeled / "a.flac").write_bytes(FILE.read_bytes())
    with pytest.raises(ValueError, match="no transcripts"):
        finetune(pretrained, tmp_path / "run", train_data=str(unlabeled), dev_data="")


def test_cli_pretrain_then_finetune(tmp_path):
    recipes = ROOT / "recipes" / "tiny"
    assert cli_main(["pretrain", str(recipes / "pretrain_wav2vec2.yaml"), f"output_dir={tmp_path}/pt", "max_steps=3",
                     f"train_data={AN4}"]) == 0
    assert (tmp_path / "pt" / "final" / "model.safetensors").exists()
    assert cli_main(["finetune", str(recipes / "finetune.yaml"), f"output_dir={tmp_path}/ft", f"model={tmp_path}/pt/final",
                     "max_steps=3", f"train_data={AN4}", f"dev_data={AN4}"]) == 0
    assert (tmp_path / "ft" / "final" / "vocab.json").exists()


def test_cli_rejects_unknown_config_keys(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: x\nlearning_rat: 0.1\n")
    assert cli_main(["pretrain", str(config)]) == 2
    assert "learning_rat" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*/*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recipe_parses(recipe):
    from hfspeech.training.arguments import FinetuningArguments, PretrainingArguments, parse_arguments

    if recipe.parent.name == "accelerate" or recipe.name in ("recipe.yaml", "pool.yaml"):
        return  # accelerate's own configs; corpus recipes and the pool: tests/test_recipes.py
    kind = FinetuningArguments if "finetune" in recipe.name else PretrainingArguments
    args = parse_arguments(kind, recipe)
    assert args.output_dir and args.max_steps > 0
    if kind is PretrainingArguments and args.model in ("base", "large", "xlarge", "tiny"):
        from hfspeech.configuration import SpeechEncoderConfig

        SpeechEncoderConfig.from_preset(args.model, objective=args.objective, **args.model_overrides)


def test_tiny_hubert_recipe_runs_from_labels_to_a_model(tmp_path):
    recipe = ROOT / "recipes" / "tiny" / "pretrain_hubert.yaml"
    assert cli_main(["labels", "fit", "--features", "mfcc", "--k", "100", AN4, str(tmp_path / "kmeans")]) == 0
    assert cli_main(["labels", "assign", str(tmp_path / "kmeans"), AN4, str(tmp_path / "labels")]) == 0
    assert cli_main(["pretrain", str(recipe), f"output_dir={tmp_path}/pt", f"labels={tmp_path}/labels",
                     f"train_data={AN4}", "max_steps=3"]) == 0
    assert (tmp_path / "pt" / "final" / "model.safetensors").exists()
    # clips shorter than min_sample_seconds are dropped (3 of the 7 fixtures) and the labels still
    # attach to the survivors, whose audio stays encoded in the table and decodes on access
    assert cli_main(["pretrain", str(recipe), f"output_dir={tmp_path}/dropped", f"labels={tmp_path}/labels",
                     f"train_data={AN4}", "max_steps=2", "min_sample_seconds=1.45"]) == 0
    from hfspeech.configuration import SpeechEncoderConfig
    from hfspeech.training.arguments import PretrainingArguments
    from hfspeech.training.pretrain_data import build_pretraining_batches

    config = SpeechEncoderConfig.from_preset("tiny", objective="hubert", label_rate=100)
    arguments = PretrainingArguments(output_dir=str(tmp_path / "unused"), train_data=AN4, labels=str(tmp_path / "labels"),
                                     min_sample_seconds=1.45, max_sample_seconds=4.0, max_batch_seconds=20.0)
    batches, summary = build_pretraining_batches(arguments, config)
    assert summary["utterances"] == 4 and summary["dropped_short"] == 3
    batch = next(batches(0))
    assert batch["input_values"].dtype == torch.float32 and batch["input_values"].shape[0] >= 1
    # labels at the wrong rate for the model are refused before training
    assert cli_main(["pretrain", str(recipe), f"output_dir={tmp_path}/bad", f"labels={tmp_path}/labels",
                     f"train_data={AN4}", "max_steps=1", "model_overrides={hubert_num_clusters: [100], label_rate: 50}"]) == 2


def fresh_accelerator(**kwargs):
    """accelerate keeps one process-wide state; a run with other settings starts it anew."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True, **kwargs)


def test_fp16_finetuning_uses_a_grad_scaler_and_keeps_weights_finite(pretrained, tmp_path, single_thread):
    accelerator = fresh_accelerator(mixed_precision="fp16")
    try:
        fields = dict(output_dir=str(tmp_path / "run"), model=str(pretrained), train_data=AN4, learning_rate=2e-3,
                      max_steps=6, freeze_transformer_steps=2, max_batch_seconds=8.0, save_steps=3, eval_steps=100,
                      mask_time_prob=0.05, mask_feature_prob=0.0, layerdrop=0.0, seed=3, mixed_precision="fp16")
        result = run_finetuning(FinetuningArguments(**fields), accelerator)
    finally:
        fresh_accelerator()
    assert isinstance(accelerator.scaler, torch.amp.GradScaler) and accelerator.native_amp
    losses = result["train_losses"]
    assert len(losses) == 6 and 0 <= result["skipped_updates"] < 6
    saved = torch.load(tmp_path / "run" / "step-00000006" / "training_state.pt", weights_only=True)
    assert saved["scaler"]["scale"] == accelerator.scaler.get_scale()
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in after.values())
    assert any(not torch.equal(after[key], before[key]) for key in before if key in after)


def compiled_and_plain_finetuning(pretrained: Path, tmp_path: Path, **overrides) -> None:
    options = dict(max_steps=3, freeze_transformer_steps=1, eval_steps=3, save_steps=3, **overrides)
    plain = finetune(pretrained, tmp_path / "plain", **options)
    compiled = finetune(pretrained, tmp_path / "compiled", torch_compile=True, torch_compile_backend="eager", **options)
    assert compiled["train_losses"] == plain["train_losses"]
    assert compiled["final"] == plain["final"]
    first = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    second = load_file(str(tmp_path / "compiled" / "final" / "model.safetensors"))
    assert first.keys() == second.keys()  # no _orig_mod. prefixes
    for key in first:
        torch.testing.assert_close(second[key], first[key], atol=0, rtol=0, msg=key)


def test_compiled_finetuning_equals_uncompiled(pretrained, tmp_path, single_thread):
    """torch.compile (eager backend: Dynamo-traced graphs, eager kernels) gives the same weights, exactly:
    frozen then unfrozen backbone, dev evaluation and checkpoints through the compiled model."""
    compiled_and_plain_finetuning(pretrained, tmp_path, mask_time_prob=0.0)


def test_compiled_finetuning_with_spec_augment(pretrained, tmp_path, single_thread):
    """Also with SpecAugment, whose masks are drawn inside the compiled forward at varying batch shapes."""
    compiled_and_plain_finetuning(pretrained, tmp_path, mask_time_prob=0.05)


def test_a_given_tokenizer_is_used_and_a_missing_one_is_refused(pretrained, tmp_path):
    from hfspeech.processing import CharacterCTCTokenizer

    # an alphabet wider than the fixtures' transcripts (all 26 letters, digits spelled out in AN4)
    given = CharacterCTCTokenizer.from_transcripts(["THE QUICK BROWN FOX JUMPS OVER A LAZY DOG'S BACK"])
    given.save_pretrained(tmp_path / "tokenizer")
    finetune(pretrained, tmp_path / "run", max_steps=2, eval_steps=100, tokenizer=str(tmp_path / "tokenizer"))
    written = json.loads((tmp_path / "run" / "final" / "vocab.json").read_text())
    assert written == json.loads((tmp_path / "tokenizer" / "vocab.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no vocab.json"):
        finetune(pretrained, tmp_path / "bad", max_steps=1, tokenizer=str(tmp_path))


def test_dev_wer_during_training_is_the_wer_of_hfspeech_evaluate(pretrained, tmp_path, capsys):
    result = finetune(pretrained, tmp_path / "run", max_steps=6, eval_steps=6, freeze_transformer_steps=0)
    assert cli_main(["evaluate", str(tmp_path / "run" / "final"), AN4, "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert result["final"]["wer"] == pytest.approx(evaluated["wer"], abs=1e-9)
    assert result["final"]["cer"] == pytest.approx(evaluated["cer"], abs=1e-9)


def test_checkpoints_can_be_ranked_by_dev_cer(pretrained, tmp_path):
    result = finetune(pretrained, tmp_path / "run", max_steps=8, eval_steps=2, freeze_transformer_steps=0,
                      average_checkpoints=2, metric_for_best_model="cer")
    index = json.loads((tmp_path / "run" / "averaging" / "index.json").read_text())
    assert len(index) == 2 and all(set(entry) == {"update", "cer"} for entry in index)
    assert result["best_cer"] == min(entry["cer"] for entry in index)
    with pytest.raises(ValueError, match="metric_for_best_model: 'loss' is not a dev metric"):
        finetune(pretrained, tmp_path / "other", metric_for_best_model="loss")


def test_speed_perturbation_early_stopping_and_checkpoint_averaging(pretrained, tmp_path):
    from hfspeech.modeling.models import SpeechEncoderForCTC

    result = finetune(pretrained, tmp_path / "run", max_steps=40, eval_steps=2, freeze_transformer_steps=0,
                      learning_rate=1e-2, speed_perturbation=[0.9, 1.0, 1.1], average_checkpoints=3,
                      early_stopping_patience=2)
    # with patience 2 the run stops two evaluations after its best one, before max_steps
    index = json.loads((tmp_path / "run" / "averaging" / "index.json").read_text())
    assert len(index) == len(result["averaged"]) <= 3
    assert [entry["update"] for entry in result["averaged"]] == \
        [entry["update"] for entry in sorted(index, key=lambda e: (e["wer"], e["update"]))]
    if result["stopped_early"]:
        assert result["updates"] < 40
    # final/ holds the mean of the kept weights
    from safetensors.torch import load_file

    kept = [load_file(str(tmp_path / "run" / "averaging" / f"update-{entry['update']:08d}.safetensors"))
            for entry in index]
    final = SpeechEncoderForCTC.from_pretrained(tmp_path / "run" / "final").state_dict()
    key = "lm_head.weight"
    torch.testing.assert_close(final[key], sum(state[key] for state in kept) / len(kept), atol=1e-6, rtol=1e-5)


def test_utterances_too_short_for_their_transcript_are_skipped_and_named(pretrained, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(AN4, data)
    rows = (data / "metadata.csv").read_text().splitlines()
    rows[1] = "fash/an255-fash-b.flac," + " ".join(["A B"] * 60)  # 239 labels for a 2.5 s utterance
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING", logger="hfspeech.training.finetune_loop"):
        result = finetune(pretrained, tmp_path / "run", train_data=str(data), dev_data="", max_steps=2)
    assert len(result["unalignable_utterances"]) == 1 and "an255-fash-b" in result["unalignable_utterances"][0]
    assert "1 of 7 training utterances are too short" in caplog.text
    assert result["skipped_updates"] == 0


def test_bad_dev_and_tokenizer_input_is_named(pretrained, tmp_path):
    from hfspeech.processing import CharacterCTCTokenizer

    narrow = CharacterCTCTokenizer.from_transcripts(["ABC"])
    narrow.save_pretrained(tmp_path / "narrow")
    with pytest.raises(ValueError, match="characters the tokenizer has no id for"):
        finetune(pretrained, tmp_path / "run", max_steps=1, tokenizer=str(tmp_path / "narrow"))
    empty = tmp_path / "empty.tsv"
    empty.write_text("path\ttext\n")
    with pytest.raises(ValueError, match="no utterances found"):
        finetune(pretrained, tmp_path / "run2", max_steps=1, dev_data=str(empty))


def test_overrides_take_yaml_numbers_without_a_dot_and_refuse_wrong_types():
    from hfspeech.training.arguments import parse_arguments

    recipe = ROOT / "recipes" / "an4" / "finetune.yaml"
    args = parse_arguments(FinetuningArguments, recipe, ["learning_rate=5e-4", "max_steps=10"])
    assert args.learning_rate == 5e-4 and isinstance(args.learning_rate, float) and args.max_steps == 10
    with pytest.raises(ValueError, match="max_steps: expected int, got 'ten'"):
        parse_arguments(FinetuningArguments, recipe, ["max_steps=ten"])

"""fairseq .pt import: outputs equal transformers' on the same weights, safe unpickling, bad input."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from helpers.fairseq_checkpoints import (
    LETTERS,
    Dictionary,
    as_namespace,
    fairseq_model_options,
    fairseq_state_dict,
    reference_model,
    save_checkpoint,
)

from hfspeech.cli import main as cli_main
from hfspeech.modeling.fairseq_config import parse_python_literal
from hfspeech.modeling.fairseq_import import convert_fairseq_checkpoint
from hfspeech.modeling.models import SpeechEncoderForCTC
from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining
from hfspeech.modeling.safe_unpickle import ForbiddenGlobalError, load_fairseq_checkpoint
from helpers import FIXTURES

pytestmark = pytest.mark.usefixtures("single_thread")
AN4 = str(FIXTURES / "an4")
AUDIO = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))


def _masks(model, num_negatives: int = 5):
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    frames = int(model.frame_lengths(torch.tensor([AUDIO.shape[1]]))[0])
    mask = _compute_mask_indices((2, frames), mask_prob=0.5, mask_length=3, min_masks=2)
    negatives = _sample_negative_indices((2, frames), num_negatives, mask_time_indices=mask)
    return torch.from_numpy(mask), torch.from_numpy(negatives)


def _assert_hidden_states_equal(got, expected) -> None:
    assert len(got) == len(expected)
    for ours, reference in zip(got, expected):
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout,checkpoint_layout", [("base", "cfg"), ("large", "args")])
def test_wav2vec2_pretraining_import_reproduces_transformers(tmp_path, layout, checkpoint_layout):
    reference = reference_model("Wav2Vec2ForPreTraining", layout)
    options = fairseq_model_options(reference.config, "wav2vec2")
    criterion = {"_name": "wav2vec", "loss_weights": [0.1, 5.0], "infonce": True}
    if checkpoint_layout == "cfg":
        checkpoint = {"cfg": {"model": options, "task": {"_name": "audio_pretraining", "normalize": False,
                                                         "sample_rate": 16000}, "criterion": criterion}}
    else:
        args = as_namespace(options, "wav2vec2")
        args.loss_weights, args.normalize, args.sample_rate = "[0.1, 5.0]", True, 16000
        # what a 2020 release also carries: training state with NumPy scalars and optimizer tensors
        checkpoint = {"args": args, "extra_state": {"val_loss": np.float64(2.5), "train_iterator": {"epoch": 3}},
                      "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "num_updates": 400000}],
                      "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}}}
    checkpoint["model"] = fairseq_state_dict(reference)
    save_checkpoint(tmp_path / "w2v.pt", checkpoint, legacy=checkpoint_layout == "args")

    convert_fairseq_checkpoint(tmp_path / "w2v.pt", tmp_path / "out")
    ours = SpeechEncoderForPreTraining.from_pretrained(tmp_path / "out").eval()
    config = ours.config
    assert (config.feat_extract_norm, config.layer_norm_first, config.conv_bias) == (
        reference.config.feat_extract_norm, reference.config.do_stable_layer_norm, reference.config.conv_bias)
    assert (config.gumbel_temperature_max, config.gumbel_temperature_min, config.gumbel_temperature_decay) == (
        2.0, 0.5, 0.999995)
    assert (config.diversity_loss_weight, config.feature_penalty_weight, config.feature_grad_mult) == (0.1, 5.0, 0.1)
    assert (config.mask_time_prob, config.num_negatives, config.codevector_dim) == (0.65, 5, 16)
    mask, negatives = _masks(ours)
    with torch.no_grad():
        expected = reference(AUDIO, mask_time_indices=mask, sampled_negative_indices=negatives,
                             output_hidden_states=True)
        got = ours(AUDIO, mask_time_indices=mask, sampled_negative_indices=negatives, output_hidden_states=True)
    _assert_hidden_states_equal(got.hidden_states, expected.hidden_states)
    torch.testing.assert_close(got.contrastive_loss, expected.contrastive_loss, atol=0, rtol=1e-4)
    torch.testing.assert_close(got.diversity_loss, expected.diversity_loss, atol=0, rtol=1e-4)
    extractor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert extractor["do_normalize"] is (checkpoint_layout == "args")


@pytest.mark.parametrize("family,layout,checkpoint_layout", [
    ("Wav2Vec2", "base", "args"), ("Wav2Vec2", "large", "cfg"), ("Hubert", "large", "cfg")])
def test_ctc_import_reproduces_transformers_and_writes_the_tokenizer(tmp_path, family, layout, checkpoint_layout):
    reference = reference_model(f"{family}ForCTC", layout)
    name = "hubert" if family == "Hubert" else "wav2vec2"
    pretraining = fairseq_model_options(reference.config, name, dropout=0.1, mask_prob=0.65)
    finetuning = dict(_name="wav2vec_ctc" if name == "wav2vec2" else "hubert_ctc",
                      w2v_path="/gone/pretrained.pt", apply_mask=True, mask_prob=0.5, mask_channel_prob=0.25,
                      mask_channel_length=64, dropout=0.0, layerdrop=0.05, final_dropout=0.0, feature_grad_mult=0.0,
                      normalize=layout == "large")
    task = {"_name": "audio_finetuning", "normalize": layout == "large", "labels": "ltr", "sample_rate": 16000}
    if checkpoint_layout == "cfg":
        pretraining_task = {"_name": "hubert_pretraining", "label_rate": 50, "normalize": layout == "large"}
        finetuning["w2v_args"] = {"model": pretraining, "task": pretraining_task, "criterion": {}}
        checkpoint = {"cfg": {"model": finetuning, "task": task},
                      "task_state": {"target_dictionary": Dictionary(LETTERS)}}
    else:
        args = as_namespace(finetuning, "wav2vec_ctc")
        args.w2v_args, args.normalize, args.labels = as_namespace(pretraining, "wav2vec2"), False, "ltr"
        checkpoint = {"args": args}
    checkpoint["model"] = fairseq_state_dict(reference, prefix="w2v_encoder.w2v_model.")
    if family == "Hubert":  # fairseq keeps HuBERT's codewords in fine-tuned checkpoints
        checkpoint["model"]["w2v_encoder.w2v_model.label_embs_concat"] = torch.rand(11, 16)
    save_checkpoint(tmp_path / "ctc.pt", checkpoint, dictionaries=True)

    result = convert_fairseq_checkpoint(tmp_path / "ctc.pt", tmp_path / "out")
    assert (family == "Hubert") == any("label_embs_concat" in note for note in result.notes)  # dropped, said so
    ours = SpeechEncoderForCTC.from_pretrained(tmp_path / "out").eval()
    assert (ours.config.hidden_dropout, ours.config.layerdrop, ours.config.mask_time_prob) == (0.0, 0.05, 0.5)
    assert (ours.config.mask_feature_prob, ours.config.mask_feature_length, ours.config.feature_grad_mult) == (
        0.25, 64, 0.0)
    with torch.no_grad():
        expected = reference(AUDIO, output_hidden_states=True)
        got = ours(AUDIO, output_hidden_states=True)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
    _assert_hidden_states_equal(got.hidden_states, expected.hidden_states)
    if checkpoint_layout == "args":  # the old layout stores no dictionary: the user is told what to pass
        assert not result.tokenizer_written
        assert any("--vocab" in note for note in result.notes)
        assert not (tmp_path / "out" / "vocab.json").exists()
        return
    from hfspeech.processing.tokenization import CharacterCTCTokenizer

    tokenizer = CharacterCTCTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.convert_ids_to_tokens(list(range(6))) == ["<pad>", "<s>", "</s>", "<unk>", "|", "E"]
    assert ours.config.pad_token_id == tokenizer.pad_token_id == 0  # fairseq's blank (symbol 0) is our blank
    assert tokenizer.decode([0, 6, 6, 0, 5, 4, 7]) == "TE A"


def test_vocab_file_gives_the_tokenizer_of_an_old_ctc_checkpoint(tmp_path):
    reference = reference_model("Wav2Vec2ForCTC", "base")
    args = as_namespace({"_name": "wav2vec_ctc", "apply_mask": False}, "wav2vec_ctc")
    args.w2v_args = as_namespace(fairseq_model_options(reference.config, "wav2vec2"), "wav2vec2")
    save_checkpoint(tmp_path / "ctc.pt", {"args": args, "model": fairseq_state_dict(reference, "w2v_encoder.w2v_model.")})
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{letter} {100 - i}\n" for i, letter in enumerate(LETTERS)))
    assert cli_main(["convert", str(tmp_path / "ctc.pt"), str(tmp_path / "out"),
                     "--vocab", str(tmp_path / "dict.ltr.txt")]) == 0
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text())
    assert [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])][:6] == [
        "<pad>", "<s>", "</s>", "<unk>", "|", "E"]
    assert SpeechEncoderForCTC.from_pretrained(tmp_path / "out").config.apply_spec_augment is False
    (tmp_path / "short.txt").write_text("A 1\n")  # 5 symbols for a 12-output head: refused
    assert cli_main(["convert", str(tmp_path / "ctc.pt"), str(tmp_path / "bad"), "--vocab",
                     str(tmp_path / "short.txt")]) == 2


def _hubert_pretraining_checkpoint(tmp_path, clusters=(7, 5), label_rate=50, dictionaries=True, omegaconf=True):
    """HuBERT pretraining checkpoint: HubertModel weights + final_proj/label_embs_concat for every label set."""
    reference = reference_model("HubertModel", "base")
    final_dim = 16
    generator = torch.Generator().manual_seed(3)
    symbols = []  # cluster ids in a shuffled dictionary order, after fairseq's 4 specials
    for k in clusters:
        order = torch.randperm(k, generator=generator).tolist()
        symbols.append([str(c) for c in order])
    state = fairseq_state_dict(reference)
    state["final_proj.weight"] = torch.randn(final_dim * len(clusters), 32, generator=generator) * 0.2
    state["final_proj.bias"] = torch.randn(final_dim * len(clusters), generator=generator) * 0.1
    state["label_embs_concat"] = torch.rand(sum(k + 4 for k in clusters), final_dim, generator=generator)
    options = fairseq_model_options(reference.config, "hubert", final_dim=final_dim, untie_final_proj=True,
                                    logit_temp=0.1, label_rate="${task.label_rate}", skip_masked=False,
                                    skip_nomask=False)
    cfg = {"model": options, "task": {"_name": "hubert_pretraining", "label_rate": label_rate, "sample_rate": 16000,
                                      "labels": [f"km{i}" for i in range(len(clusters))], "normalize": False},
           "criterion": {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0,
                         "loss_weights": [10.0]}}
    if omegaconf:  # a DictConfig pickled into the checkpoint, as some fairseq versions saved it
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(cfg)
    checkpoint = {"cfg": cfg, "model": state}
    if dictionaries:
        checkpoint["task_state"] = {"dictionaries": [Dictionary(s) for s in symbols]}
    save_checkpoint(tmp_path / "hubert.pt", checkpoint, dictionaries=dictionaries)
    return reference, state, symbols


def test_hubert_pretraining_import_keeps_every_label_set(tmp_path, monkeypatch):
    reference, state, symbols = _hubert_pretraining_checkpoint(tmp_path)
    # loading needs neither omegaconf nor fairseq: both are made unimportable
    for name in [name for name in sys.modules if name.split(".")[0] in ("omegaconf", "fairseq")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "omegaconf", None)
    convert_fairseq_checkpoint(tmp_path / "hubert.pt", tmp_path / "out")
    ours = SpeechEncoderForPreTraining.from_pretrained(tmp_path / "out").eval()
    config = ours.config
    assert (config.objective, config.hubert_num_clusters, config.label_rate) == ("hubert", [7, 5], 50)
    assert (config.hubert_final_dim, config.hubert_untie_final_proj, config.feature_penalty_weight) == (16, True, 10.0)

    mask, _ = _masks(ours)
    frames = mask.shape[1]
    labels = [torch.randint(0, k, (2, frames), generator=torch.Generator().manual_seed(k)) for k in (7, 5)]
    with torch.no_grad():
        expected = reference(AUDIO, mask_time_indices=mask, output_hidden_states=True)
        got = ours(AUDIO, mask_time_indices=mask, labels=labels, output_hidden_states=True)
    _assert_hidden_states_equal(got.hidden_states, expected.hidden_states)
    # fairseq's logits: cos(final_proj chunk i, every row of label set i) / logit_temp, over K_i + 4 rows
    projected = torch.nn.functional.linear(expected.last_hidden_state[mask], state["final_proj.weight"],
                                           state["final_proj.bias"]).chunk(2, dim=-1)
    codewords = state["label_embs_concat"].split([7 + 4, 5 + 4])
    for label_set, (proj, rows, order) in enumerate(zip(projected, codewords, symbols)):
        fairseq_logits = torch.cosine_similarity(proj[:, None, :], rows[None], dim=-1) / 0.1
        cluster_columns = [4 + order.index(str(c)) for c in range(len(order))]
        torch.testing.assert_close(got.logits_masked[label_set], fairseq_logits[:, cluster_columns],
                                   atol=1e-4, rtol=1e-4)


def _write_labels(directory, clusters: int, label_rate: int) -> None:
    from hfspeech.training.arguments import load_sources

    dataset = load_sources(AN4)
    directory.mkdir()
    generator = torch.Generator().manual_seed(0)
    (directory / "ids.txt").write_text("".join(f"{i}\n" for i in dataset["id"]))
    rows = [torch.randint(0, clusters, (round(d * label_rate),), generator=generator).tolist() for d in dataset["duration"]]
    (directory / f"k{clusters}.km").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    (directory / "labels.json").write_text(json.dumps(dict(label_rate=label_rate, num_clusters=[clusters],
                                                           feature="test", feature_dim=1)))


def test_pretraining_continues_from_an_imported_hubert(tmp_path, capsys):
    _hubert_pretraining_checkpoint(tmp_path, clusters=(7,), dictionaries=False, omegaconf=False)
    assert cli_main(["convert", str(tmp_path / "hubert.pt"), str(tmp_path / "imported")]) == 0
    assert "assumed fairseq's 4 special symbols" in capsys.readouterr().out
    recipe = tmp_path / "continue.yaml"
    recipe.write_text(f"output_dir: {tmp_path}/run\nmodel: {tmp_path}/imported\nobjective: hubert\n"
                      f"train_data: {AN4}\nlabels: {tmp_path}/k7\nmax_batch_seconds: 6.0\nmax_sample_seconds: 3.0\n"
                      "min_sample_seconds: 1.0\nlearning_rate: 0.001\nwarmup_ratio: 0.0\nmax_steps: 2\n"
                      "save_steps: 2\nlogging_steps: 1\n")
    _write_labels(tmp_path / "k7", 7, 50)
    assert cli_main(["pretrain", str(recipe)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped_updates"] == 0 and result["metrics"]["masked_frames"] > 0
    assert 0 < result["metrics"]["loss"] < 100
    before = SpeechEncoderForPreTraining.from_pretrained(tmp_path / "imported").state_dict()
    after = SpeechEncoderForPreTraining.from_pretrained(tmp_path / "run" / "final").state_dict()
    assert after["objective.label_embeddings"].shape == (7, 16)
    assert (after["objective.final_proj.weight"] - before["objective.final_proj.weight"]).abs().max() > 1e-6
    # labels with another K or rate than the imported model are refused before training
    _write_labels(tmp_path / "k5", 5, 50)
    assert cli_main(["pretrain", str(recipe), f"labels={tmp_path}/k5", f"output_dir={tmp_path}/bad1"]) == 2
    assert "K=[5] but the model predicts K=[7]" in capsys.readouterr().err
    _write_labels(tmp_path / "k7_100", 7, 100)
    assert cli_main(["pretrain", str(recipe), f"labels={tmp_path}/k7_100", f"output_dir={tmp_path}/bad2"]) == 2
    assert "label_rate=50" in capsys.readouterr().err


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"args": Exploit(), "model": {}}, tmp_path / "evil.pt")
    with pytest.raises(ForbiddenGlobalError, match=r"posix\.system|nt\.system") as error:
        load_fairseq_checkpoint(tmp_path / "evil.pt")
    assert str(tmp_path / "evil.pt") in str(error.value)
    assert not marker.exists()
    assert cli_main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()

    class Builtin:
        def __reduce__(self):
            return eval, ("1 + 1",)

    torch.save({"cfg": {"model": Builtin()}}, tmp_path / "eval.pt")
    with pytest.raises(ForbiddenGlobalError, match="builtins.eval"):
        load_fairseq_checkpoint(tmp_path / "eval.pt")
    # a fairseq class is rebuilt as data: its code (here __setstate__, which would raise) never runs
    save_checkpoint(tmp_path / "dict.pt", {"task_state": {"target_dictionary": Dictionary(["A"])}}, dictionaries=True)
    loaded = load_fairseq_checkpoint(tmp_path / "dict.pt")["task_state"]["target_dictionary"]
    assert loaded["__class__"] == "fairseq.data.dictionary.Dictionary" and loaded["symbols"][-1] == "A"


def test_option_strings_are_parsed_without_eval():
    assert parse_python_literal("[(512, 10, 5)] + [(512, 3, 2)] * 2", "conv") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    with pytest.raises(ValueError, match="conv_feature_layers"):
        parse_python_literal("__import__('os').system('true')", "conv_feature_layers")


def _ctc_checkpoint(tmp_path, name="wav2vec_ctc", pretraining_name="wav2vec2", **overrides):
    reference = reference_model("Wav2Vec2ForCTC", "base")
    options = fairseq_model_options(reference.config, pretraining_name, **overrides)
    cfg = {"model": {"_name": name, "w2v_args": {"model": options, "task": {}}}, "task": {}}
    state = fairseq_state_dict(reference, "w2v_encoder.w2v_model.")
    return cfg, state


@pytest.mark.parametrize("change,message", [
    (dict(name="wav2vec_seq2seq"), "fairseq model 'wav2vec_seq2seq' is not supported"),
    (dict(name="data2vec_audio"), "'data2vec_audio'"),
    (dict(layer_type="conformer"), "layer_type='conformer'"),
    (dict(extractor_mode="group_norm_masked"), "extractor_mode='group_norm_masked'"),
    (dict(pos_conv_depth=5), "pos_conv_depth=5"),
    (dict(activation_fn="relu"), "activation_fn='relu'"),
    (dict(mask_selection="poisson"), "mask_selection='poisson'"),
])
def test_unsupported_models_and_options_are_named(tmp_path, change, message):
    change = dict(change)
    name = change.pop("name", "wav2vec_ctc")
    cfg, state = _ctc_checkpoint(tmp_path, name=name, **change)
    save_checkpoint(tmp_path / "model.pt", {"cfg": cfg, "model": state})
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        convert_fairseq_checkpoint(tmp_path / "model.pt", tmp_path / "out")
    if "mask_selection" in change:  # training-only: importable on request
        convert_fairseq_checkpoint(tmp_path / "model.pt", tmp_path / "out", ignore_training_options=True)


def test_pretraining_only_options_refused_for_pretraining_models(tmp_path):
    reference = reference_model("Wav2Vec2ForPreTraining", "base")
    options = fairseq_model_options(reference.config, "wav2vec2", target_glu=True, codebook_negatives=4)
    save_checkpoint(tmp_path / "w2v.pt", {"cfg": {"model": options}, "model": fairseq_state_dict(reference)})
    with pytest.raises(ValueError, match=r"target_glu=True.*codebook_negatives=4"):
        convert_fairseq_checkpoint(tmp_path / "w2v.pt", tmp_path / "out")


def test_missing_and_unknown_parameters_are_listed(tmp_path):
    cfg, state = _ctc_checkpoint(tmp_path)
    del state["w2v_encoder.w2v_model.encoder.layers.1.fc2.weight"]
    save_checkpoint(tmp_path / "missing.pt", {"cfg": cfg, "model": state})
    with pytest.raises(ValueError, match=r"missing \['speech_encoder\.encoder\.layers\.1\.feed_forward\.output\.weight'\]"):
        convert_fairseq_checkpoint(tmp_path / "missing.pt", tmp_path / "out")
    cfg, state = _ctc_checkpoint(tmp_path)
    state["w2v_encoder.w2v_model.encoder.adapter.weight"] = torch.zeros(2)
    save_checkpoint(tmp_path / "unknown.pt", {"cfg": cfg, "model": state})
    with pytest.raises(ValueError, match=r"w2v_encoder\.w2v_model\.encoder\.adapter\.weight"):
        convert_fairseq_checkpoint(tmp_path / "unknown.pt", tmp_path / "out")
    save_checkpoint(tmp_path / "noconfig.pt", {"model": state})
    with pytest.raises(ValueError, match="no 'cfg' or 'args'"):
        convert_fairseq_checkpoint(tmp_path / "noconfig.pt", tmp_path / "out")

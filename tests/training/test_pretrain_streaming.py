"""Pretraining on a streamed source (``streaming: true``): every utterance once per epoch within the
batch budget, HuBERT labels attached lazily, and a resumed run equal to an uninterrupted one (also on an
indexed source, through the same DataLoader path)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from helpers import FIXTURES

from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining
from hfspeech.data import load_source
from hfspeech.training.arguments import PretrainingArguments
from hfspeech.training.pretrain_data import build_pretraining_batches, read_pretraining_labels
from hfspeech.training.pretrain_loop import run_pretraining

AN4 = str(FIXTURES / "an4")  # 7 utterances of 1.3-4.4 s


def _args(tmp_path, **fields) -> PretrainingArguments:
    return PretrainingArguments(**{"output_dir": str(tmp_path), "train_data": AN4, "streaming": True,
                                   "streaming_buffer": 4, "min_sample_seconds": 0.5, "max_sample_seconds": 2.0,
                                   "max_batch_seconds": 4.0, "max_steps": 3, "learning_rate": 1e-3,
                                   "save_steps": 1, "logging_steps": 1, "seed": 3, **fields})


def _model() -> SpeechEncoderForPreTraining:
    torch.manual_seed(0)
    return SpeechEncoderForPreTraining(SpeechEncoderConfig.from_preset(
        "tiny", mask_time_prob=0.4, mask_time_length=4, num_negatives=10, layerdrop=0.0))


def test_a_streamed_epoch_holds_every_utterance_once_within_the_budget(tmp_path):
    config = _model().config
    batches_for_epoch, summary = build_pretraining_batches(_args(tmp_path), config)
    assert summary["streaming"]
    epoch = list(batches_for_epoch(0))
    assert sum(batch["input_values"].shape[0] for batch in epoch) == len(load_source(AN4))  # every utterance
    for batch in epoch:  # crops to the shortest utterance, at most 2 s each, at most 4 s padded per batch
        assert batch["input_values"].numel() <= 4.0 * 16000 and batch["input_values"].shape[1] <= 2.0 * 16000
    # the same epoch again is the same batches; the next epoch is shuffled by its seed
    assert all(torch.equal(a["input_values"], b["input_values"]) for a, b in zip(epoch, batches_for_epoch(0)))
    shapes = [tuple(batch["input_values"].shape) for batch in epoch]
    assert [tuple(batch["input_values"].shape) for batch in batches_for_epoch(1)] != shapes or not all(
        torch.equal(a["input_values"], b["input_values"]) for a, b in zip(epoch, batches_for_epoch(1)))


def test_hubert_labels_are_found_by_id_for_a_stream_as_for_an_indexed_source(tmp_path):
    from hfspeech.data import HubertCollator
    from hfspeech.labels import fit_kmeans, make_frame_features, write_label_files
    from hfspeech.labels.assign import read_label_directory
    from hfspeech.labels.feature_groups import iter_source_utterances

    mfcc = make_frame_features("mfcc")
    utterances = list(iter_source_utterances(AN4))
    model = fit_kmeans(torch.cat(mfcc.batch([w for _, w in utterances], [n for n, _ in utterances])), 5, seed=0)
    write_label_files(iter(utterances), mfcc, [model], tmp_path / "labels")
    config = SpeechEncoderConfig.from_preset("tiny", objective="hubert", hubert_num_clusters=[5], label_rate=100)
    rate, labels = read_pretraining_labels(str(tmp_path / "labels"), config, load_source(AN4))
    _, ids, written = read_label_directory(tmp_path / "labels")
    assert rate == 100 and sorted(labels) == sorted(ids)
    # the collator finds each example's labels by id, streamed or indexed, as if the example carried them
    collator = HubertCollator(label_rates=rate, max_samples=None, crop_to_shortest=False, labels=labels)
    for source in (load_source(AN4), load_source(AN4, streaming=True)):
        examples = sorted(source, key=lambda example: example["id"])[:2]
        inline = [dict(example, labels=written[5][ids.index(example["id"])]) for example in examples]
        carried = HubertCollator(label_rates=rate, max_samples=None, crop_to_shortest=False)(inline)
        assert all(torch.equal(a, b) for a, b in zip(collator(examples)["labels"], carried["labels"]))
    stranger = dict(examples[0], id="nobody/0")
    with pytest.raises(ValueError, match="nobody/0 has no labels in"):
        HubertCollator(label_rates=rate, labels=labels, labels_source="DIR")([stranger])
    write_label_files(iter(utterances[1:]), mfcc, [model], tmp_path / "partial")
    with pytest.raises(ValueError, match=r"1 utterance\(s\) have no labels"):
        read_pretraining_labels(str(tmp_path / "partial"), config, load_source(AN4))


@pytest.mark.parametrize("streaming", [True, False])
def test_a_resumed_run_on_the_real_data_path_equals_an_uninterrupted_one(tmp_path, streaming):
    """Through the DataLoader the loops use (streamed or indexed source), with dropout on: reopening the data
    on resume must not move the RNG the checkpoint restored."""
    def run(output_dir, crash_after_batches=None):
        args = _args(output_dir, streaming=streaming)
        batches, _ = build_pretraining_batches(args, _model().config)
        served = {"count": 0}

        def crashing(epoch):
            for batch in batches(epoch):
                if served["count"] == crash_after_batches:
                    raise RuntimeError("killed")
                served["count"] += 1
                yield batch

        return run_pretraining(_model(), crashing, args, Accelerator(cpu=True))

    full = run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "resumed", crash_after_batches=2)  # killed in update 3, after the update-2 checkpoint
    resumed = run(tmp_path / "resumed")  # a new process continues from it, mid-stream
    assert resumed["step"] == full["step"] == 3 and resumed["epoch"] == full["epoch"]
    final = {name: SpeechEncoderForPreTraining.from_pretrained(tmp_path / name / "final").state_dict()
             for name in ("full", "resumed")}
    for key, value in final["full"].items():
        torch.testing.assert_close(final["resumed"][key], value, atol=0, rtol=0, msg=key)

"""DataLoader workers change where batches are decoded and collated, not what they hold: crops and speed
factors come from per-batch seeds (`BatchSeeds`), so 0 and 2 workers give the same batches from an indexed
source. A streamed source is split into shards across the workers (each buckets its own stream), so its
batches group utterances differently, but every utterance still comes exactly once per epoch."""

from __future__ import annotations

import pytest
import torch
from helpers import FIXTURES

from hfspeech import SpeechEncoderConfig
from hfspeech.data import BatchSeeds, CTCCollator, DurationBucketBatchSampler, load_source
from hfspeech.data.augmentation import SpeedPerturbation
from hfspeech.training.arguments import PretrainingArguments
from hfspeech.training.loaders import open_loader
from hfspeech.training.pretrain_data import build_pretraining_batches

AN4 = str(FIXTURES / "an4")  # 7 utterances of 1.3-4.4 s


def test_batch_seeds_depend_on_seed_epoch_and_the_batch_only():
    examples = [{"id": "a"}, {"id": "b"}]

    def draw(seeds, batch):
        return torch.randint(1000, (8,), generator=seeds.generator(batch)).tolist()

    seeds = BatchSeeds(3)
    first = draw(seeds, examples)
    assert draw(seeds, examples) == first == draw(BatchSeeds(3), [dict(e, audio=None) for e in examples])
    assert draw(seeds, examples[::-1]) != first and draw(BatchSeeds(4), examples) != first
    seeds.set_epoch(1)
    assert draw(seeds, examples) != first
    with pytest.raises(ValueError, match="example 1 of the batch has no 'id'"):
        seeds.generator([{"id": "a"}, {}])


def _labels(tmp_path) -> str:
    from hfspeech.labels import fit_kmeans, make_frame_features, write_label_files
    from hfspeech.labels.feature_groups import iter_source_utterances

    mfcc = make_frame_features("mfcc")
    utterances = list(iter_source_utterances(AN4))
    model = fit_kmeans(torch.cat(mfcc.batch([w for _, w in utterances], [n for n, _ in utterances])), 5, seed=0)
    write_label_files(iter(utterances), mfcc, [model], tmp_path / "labels")
    return str(tmp_path / "labels")


def _same(first: list[dict], second: list[dict]) -> bool:
    def flat(batch):
        return [batch["input_values"], batch["attention_mask"], *batch.get("labels", [])]

    return len(first) == len(second) and all(
        len(flat(a)) == len(flat(b)) and all(torch.equal(x, y) for x, y in zip(flat(a), flat(b)))
        for a, b in zip(first, second))


@pytest.mark.parametrize("streaming", [False, True])
def test_hubert_pretraining_batches_do_not_depend_on_the_number_of_workers(tmp_path, streaming):
    config = SpeechEncoderConfig.from_preset("tiny", objective="hubert", hubert_num_clusters=[5], label_rate=100)
    epochs = {}
    for workers in (0, 2):
        args = PretrainingArguments(
            output_dir=str(tmp_path / str(workers)), train_data=AN4, labels=_labels(tmp_path), seed=5,
            min_sample_seconds=0.5, max_sample_seconds=1.5, max_batch_seconds=4.0, streaming=streaming,
            streaming_buffer=7, speed_perturbation=[0.9, 1.0, 1.1], dataloader_num_workers=workers)
        batches_for_epoch, _ = build_pretraining_batches(args, config)
        epochs[workers] = [list(batches_for_epoch(epoch)) for epoch in (0, 1)]
    for workers in (0, 2):
        assert [sum(batch["input_values"].shape[0] for batch in epoch) for epoch in epochs[workers]] == [7, 7]
    if not streaming:
        assert _same(epochs[0][0], epochs[2][0]) and _same(epochs[0][1], epochs[2][1])
    assert not _same(epochs[0][0], epochs[0][1])  # the next epoch crops and perturbs anew


def test_ctc_batches_with_speed_perturbation_do_not_depend_on_the_number_of_workers():
    dataset = load_source(AN4)
    seeds = BatchSeeds(1)
    collator = CTCCollator(tokenizer=lambda text: [ord(c) for c in text], speed=SpeedPerturbation([0.9, 1.1]),
                           generator=seeds)
    sampler = DurationBucketBatchSampler(dataset.with_format(None)["duration"], 6.0, seed=0)
    epochs = []
    for workers in (0, 2):
        seeds.set_epoch(0)
        epochs.append(list(open_loader(dataset, collator, seed=0, num_workers=workers, batch_sampler=sampler)))
    assert len(epochs[0]) > 1 and _same(epochs[0], epochs[1])
    lengths = dataset.with_format(None)["duration"]
    total = sum(int(batch["attention_mask"].sum()) for batch in epochs[0])
    assert abs(total - sum(lengths) * 16000) > 1000  # speed factors 0.9/1.1 changed the lengths

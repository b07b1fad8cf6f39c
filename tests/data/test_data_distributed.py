"""Two real processes (torchrun + gloo, joined through an ``Accelerator``) see disjoint data.

``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate 1.15, so
the test runs this file under ``torchrun --nproc_per_node 2``; each rank writes what it saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FIXTURES as TEST_FIXTURES, ROOT, TESTS

FIXTURES = TEST_FIXTURES / "data"
WORLD_SIZE = 2


def worker(output_dir: Path) -> None:
    import torch
    from accelerate import Accelerator

    from hfspeech.data import CTCCollator, DurationBucketBatchSampler, StreamingBucketBatcher, load_source

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == WORLD_SIZE, accelerator.num_processes
    rank = accelerator.process_index
    dataset = load_source(str(FIXTURES / "an4"))
    collator = CTCCollator(tokenizer=lambda text: [ord(c) for c in text])
    sampler = DurationBucketBatchSampler(dataset["duration"], max_seconds=6.0, num_buckets=2, seed=11,
                                         num_replicas=accelerator.num_processes, rank=rank)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator)
    record: dict = {"rank": rank, "epochs": [], "batch_counts": []}
    for epoch in range(2):
        sampler.set_epoch(epoch)
        ids, seconds = [], []
        for batch_indices, batch in zip(sampler.__iter__(), loader):
            ids.append(list(dataset.select(batch_indices)["id"]))
            seconds.append(batch["input_values"].numel() / 16000)
        record["epochs"].append(ids)
        record["batch_counts"].append(len(ids))
        record.setdefault("padded_seconds", []).extend(seconds)
    # resume mid-epoch 1 after one consumed batch
    sampler.set_epoch(1)
    resumed = DurationBucketBatchSampler(dataset["duration"], max_seconds=6.0, num_buckets=2, seed=11,
                                         num_replicas=accelerator.num_processes, rank=rank)
    resumed.load_state_dict(sampler.state_dict(consumed_batches=1))
    record["resumed"] = [list(dataset.select(b)["id"]) for b in resumed]
    stream = load_source(str(FIXTURES / "fsdd"), streaming=True)
    batcher = StreamingBucketBatcher(stream, max_seconds=2.0, buffer_size=4, seed=0,
                                     num_replicas=accelerator.num_processes, rank=rank)
    record["stream"] = [e["id"] for batch in batcher for e in batch]
    gathered = accelerator.gather(torch.tensor([len(record["stream"])]))
    record["stream_total"] = int(gathered.sum())
    (output_dir / f"rank{rank}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()
    accelerator.end_training()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    output_dir = tmp_path_factory.mktemp("ranks")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD_SIZE), __file__, str(output_dir)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((output_dir / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def test_two_ranks_see_disjoint_complete_data_each_epoch(ranks):
    all_ids = [line.split(",")[0].rsplit(".", 1)[0] for line in (FIXTURES / "an4" / "metadata.csv").read_text().splitlines()[1:]]
    assert [r["rank"] for r in ranks] == [0, 1]
    for epoch in range(2):
        seen = [sorted(i for batch in r["epochs"][epoch] for i in batch) for r in ranks]
        assert ranks[0]["batch_counts"][epoch] == ranks[1]["batch_counts"][epoch]
        assert set(seen[0]) | set(seen[1]) == set(all_ids)
        overlap = set(seen[0]) & set(seen[1])
        # only a repeated batch (uneven="pad") may appear on both ranks
        assert len(overlap) <= max(len(b) for r in ranks for b in r["epochs"][epoch])
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]  # epochs reshuffle
    assert all(s <= 6.0 + 1e-9 for r in ranks for s in r["padded_seconds"])


def test_resume_and_streaming_split_across_ranks(ranks):
    for r in ranks:
        assert r["resumed"] == r["epochs"][1][1:]
    streams = [set(r["stream"]) for r in ranks]
    assert not streams[0] & streams[1]
    assert sorted(streams[0] | streams[1]) == sorted(p.stem for p in (FIXTURES / "fsdd").glob("*.wav"))
    assert ranks[0]["stream_total"] == 6


if __name__ == "__main__":
    worker(Path(sys.argv[1]))

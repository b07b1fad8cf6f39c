"""Input-pipeline throughput: audio-seconds per second per CPU core, as the training loops load data.

Measured on the same real FLAC files (../shared/data: AN4 train, the LibriSpeech clips, speechocean762):
- the limit: a bare decode loop (soundfile; torchcodec) in one process;
- hfspeech: `build_pretraining_batches` (wav2vec 2.0; HuBERT with labels attached) and the fine-tuning path
  (`open_loader` + `CTCCollator` + duration buckets), with DataLoader workers 0/1/2;
- transformers' example-script path: ``datasets`` ``map`` decoding + ``Wav2Vec2FeatureExtractor`` into
  Arrow, then a plain shuffled ``DataLoader`` with a padding collator that also draws the masks and
  negatives (as ``run_wav2vec2_pretraining_no_trainer.py``'s collator does);
- streaming: the same audio as parquet shards in the Hub schema (``openslr/librispeech_asr``), streamed
  through `StreamingBucketBatcher`, and the peak RSS of one streamed pass over a 10x larger shard set.

"Per core" divides by the processes that decode (workers, or 1 with none) capped at the machine's cores.
Usage: .venv/bin/python benchmarks/data_throughput.py [--workers 0 1 2] [--output benchmarks/results/data_throughput.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = ["an4/train", "librispeech-unlabeled", "speechocean762/train"]
LABELED = ["an4/train", "speechocean762/train"]


def files_and_seconds(specs: list[str]) -> tuple[list[str], float]:
    from hfspeech.training.arguments import load_sources

    table = load_sources(",".join(specs)).with_format(None)
    return [audio["path"] for audio in table["audio"]], float(np.sum(table["duration"]))


def bare_decode(paths: list[str], kind: str) -> float:
    """Seconds of wall time to decode every file once, in this process."""
    start = time.perf_counter()
    for path in paths:
        if kind == "soundfile":
            import soundfile
            soundfile.read(path, dtype="float32")
        else:
            from torchcodec.decoders import AudioDecoder
            AudioDecoder(path, sample_rate=16000, num_channels=1).get_all_samples()
    return time.perf_counter() - start


def write_labels(specs: list[str], directory: Path) -> str:
    """Random HuBERT labels at 50 Hz (K=100) for every utterance: loading cost does not depend on their values."""
    from hfspeech.labels.assign import IDS_FILE, LabelMetadata, format_label_lines, km_file_name
    from hfspeech.training.arguments import load_sources

    table = load_sources(",".join(specs)).with_format(None)
    counts = np.floor(np.asarray(table["duration"]) * 50).astype(np.int64)
    labels = np.random.RandomState(0).randint(0, 100, counts.sum())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / IDS_FILE).write_text("".join(f"{i}\n" for i in table["id"]))
    (directory / km_file_name(100)).write_bytes(format_label_lines(labels, counts))
    LabelMetadata(label_rate=50, num_clusters=[100], feature="random", feature_dim=0,
                  num_utterances=len(counts), num_frames=int(counts.sum())).save(directory)
    return str(directory)


def drain(batches) -> tuple[float, float]:
    """(wall seconds to the last batch, audio seconds in the batches) of one pass."""
    start, delivered, last = time.perf_counter(), 0, 0.0
    for batch in batches:
        delivered += int(batch["attention_mask"].sum())
        last = time.perf_counter()
    return last - start, delivered / 16000


def end_of_stream_wait() -> float:
    """Seconds a streamed ``datasets`` pass over parquet waits when its shards run out
    (``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN``, apache/arrow#45214): once per pass and per
    worker, *before* the bucket buffer's last batches, so it lands inside `drain`'s time. A fixed cost
    per epoch (5 s on an epoch of LibriSpeech 960 h is < 1 %) that would dominate these short passes:
    the streamed rows report their rate without it, and the wait beside them."""
    import datasets

    return float(datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN)


def hfspeech_pretraining(specs, workers, objective="wav2vec2", labels="", streaming=False, data_files=None):
    from hfspeech import SpeechEncoderConfig
    from hfspeech.training.arguments import PretrainingArguments
    from hfspeech.training.pretrain_data import build_pretraining_batches

    config = SpeechEncoderConfig.from_preset("base", objective=objective,
                                             **({"hubert_num_clusters": [100]} if objective == "hubert" else {}))
    args = PretrainingArguments(output_dir=tempfile.mkdtemp(), train_data=",".join(specs), labels=labels,
                                min_sample_seconds=1.0, dataloader_num_workers=workers, streaming=streaming)
    batches, _ = build_pretraining_batches(args, config)
    return drain(batches(0))


def hfspeech_finetuning(specs, workers):
    from hfspeech.data import BatchSeeds, CTCCollator, DurationBucketBatchSampler, TextNormalizer
    from hfspeech.processing import CharacterCTCTokenizer
    from hfspeech.training.arguments import load_sources
    from hfspeech.training.loaders import open_loader

    train = load_sources(",".join(specs))
    table = train.with_format(None)
    normalizer = TextNormalizer()
    tokenizer = CharacterCTCTokenizer.from_transcripts([normalizer(t) for t in table["text"]])
    collator = CTCCollator(tokenizer=tokenizer, text_normalizer=normalizer, generator=BatchSeeds(1))
    sampler = DurationBucketBatchSampler(table["duration"], 200.0, seed=1)
    return drain(open_loader(train, collator, seed=1, num_workers=workers, batch_sampler=sampler))


def transformers_path(specs, workers, cache_dir: Path):
    """(map seconds, epoch seconds, delivered audio seconds, Arrow cache bytes)."""
    import datasets
    from transformers import Wav2Vec2FeatureExtractor
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    paths, _ = files_and_seconds(specs)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    raw = datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", datasets.Audio(sampling_rate=16000))

    def prepare(example):
        audio = example["audio"]
        array = audio["array"] if isinstance(audio, dict) else audio.get_all_samples().data[0].numpy()
        values = extractor(array, sampling_rate=16000, max_length=250_000, truncation=True).input_values[0]
        return {"input_values": values, "input_length": len(values)}

    start = time.perf_counter()
    vectorized = raw.map(prepare, remove_columns=["audio"], cache_file_name=str(cache_dir / "vectorized.arrow"))
    vectorized = vectorized.filter(lambda n: n >= 16000, input_columns="input_length")
    map_seconds = time.perf_counter() - start

    def collate(features):
        batch = extractor.pad([{"input_values": f["input_values"]} for f in features], padding="longest",
                              return_tensors="pt")
        frames = (batch["input_values"].shape[1] - 400) // 320 + 1
        mask = _compute_mask_indices((len(features), frames), 0.65, 10, min_masks=2)
        _sample_negative_indices((len(features), frames), 100, mask_time_indices=mask)
        return batch

    loader = torch.utils.data.DataLoader(vectorized, batch_size=8, shuffle=True, collate_fn=collate,
                                         num_workers=workers, generator=torch.Generator().manual_seed(0))
    seconds, delivered = drain(loader)
    return map_seconds, seconds, delivered, (cache_dir / "vectorized.arrow").stat().st_size


def write_hub_shards(specs, folder: Path, copies: int = 1, shards_per_copy: int = 8) -> str:
    """The audio of ``specs`` as parquet shards in ``openslr/librispeech_asr``'s schema (FLAC bytes inside),
    ``copies`` times (fresh ids each time)."""
    import datasets
    from hfspeech.training.arguments import load_sources

    table = load_sources(",".join(specs)).with_format(None)
    features = datasets.Features({"file": datasets.Value("string"), "audio": datasets.Audio(sampling_rate=16000),
                                  "text": datasets.Value("string"), "speaker_id": datasets.Value("int64"),
                                  "chapter_id": datasets.Value("int64"), "id": datasets.Value("string")})
    audio = [Path(entry["path"]).read_bytes() for entry in table["audio"]]
    texts = table["text"] if "text" in table.column_names else ["A"] * len(audio)
    folder.mkdir(parents=True, exist_ok=True)
    shards, total = [], copies * shards_per_copy
    for copy in range(copies):
        for part in range(shards_per_copy):
            rows = range(part, len(audio), shards_per_copy)
            shard = datasets.Dataset.from_dict({
                "file": [f"{i}.flac" for i in rows], "audio": [{"bytes": audio[i], "path": f"{i}.flac"} for i in rows],
                "text": [texts[i] or "A" for i in rows], "speaker_id": [0] * len(rows), "chapter_id": [0] * len(rows),
                "id": [f"c{copy}-{table['id'][i]}" for i in rows]}, features=features)
            path = folder / f"train.100-{copy * shards_per_copy + part:05d}-of-{total:05d}.parquet"
            shard.to_parquet(str(path))
            shards.append(str(path))
    return str(folder)


def streamed_pass(shard_dir: str, workers: int) -> dict:
    """One streamed wav2vec 2.0 pretraining pass over a directory of Hub-schema shards: wall s, delivered audio s."""
    seconds, delivered = hfspeech_pretraining([shard_dir], workers, streaming=True)
    return {"wall": seconds - end_of_stream_wait(), "wait": end_of_stream_wait(), "delivered": delivered}


def peak_rss_of_streamed_pass(shard_dir: str, workers: int) -> dict:
    """Run `streamed_pass` in a fresh process; its peak RSS (self + workers) in MiB."""
    code = (f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "import data_throughput as d; "
            f"r = d.streamed_pass({shard_dir!r}, {workers}); "
            "r['rss_self'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
            "r['rss_children'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024; print(json.dumps(r))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "data_throughput.md"))
    parser.add_argument("--sources", nargs="+", default=SOURCES, help="folders under ../shared/data")
    options = parser.parse_args()
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    specs = [str(DATA / spec) for spec in options.sources]
    labeled = [str(DATA / spec) for spec in LABELED if spec in options.sources]
    paths, seconds = files_and_seconds(specs)
    labeled_paths, labeled_seconds = files_and_seconds(labeled)
    results: dict = {"files": len(paths), "audio_hours": seconds / 3600, "cores": cores}
    bare_decode(paths[:200], "soundfile")  # warm the page cache
    for kind in ("soundfile", "torchcodec"):
        results[f"bare_{kind}"] = seconds / min(bare_decode(paths, kind) for _ in range(2))
    # fine-tuning reads the labeled corpora only (more, shorter files): its limit is their own bare decode
    results["bare_soundfile_labeled"] = labeled_seconds / min(bare_decode(labeled_paths, "soundfile") for _ in range(2))
    rows = []

    def row(name, workers, wall, source_seconds, delivered=None, note=""):
        limit = results["bare_soundfile_labeled" if "fine-tuning" in name else "bare_soundfile"]
        per_core = source_seconds / wall / min(max(workers, 1), cores)
        rows.append({"pipeline": name, "workers": workers, "wall_s": wall, "audio_s_per_s": source_seconds / wall,
                     "per_core": per_core, "of_limit": per_core / limit,
                     "delivered_per_s": None if delivered is None else delivered / wall, "note": note})
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        labels = write_labels(specs, scratch / "labels")
        for workers in options.workers:
            wall, delivered = hfspeech_pretraining(specs, workers)
            row("hfspeech pretraining, wav2vec 2.0", workers, wall, seconds, delivered)
            wall, delivered = hfspeech_pretraining(specs, workers, "hubert", labels)
            row("hfspeech pretraining, HuBERT (labels attached)", workers, wall, seconds, delivered)
            wall, delivered = hfspeech_finetuning(labeled, workers)
            row("hfspeech fine-tuning (CTC)", workers, wall, labeled_seconds, delivered)
            cache = scratch / f"hf{workers}"
            cache.mkdir()
            map_s, epoch_s, delivered, cache_bytes = transformers_path(specs, workers, cache)
            row("transformers example: map + first epoch", workers, map_s + epoch_s, seconds, delivered,
                f"map {map_s:.1f} s (1 process), Arrow cache {cache_bytes / 2**20:.0f} MiB")
            row("transformers example: later epochs (from the Arrow cache)", workers, epoch_s, seconds, delivered)
        shards = write_hub_shards(specs, scratch / "shards")
        for workers in options.workers:
            result = peak_rss_of_streamed_pass(shards, workers)
            row("hfspeech pretraining, streamed Hub parquet (8 shards)", workers, result["wall"], seconds,
                result["delivered"], f"peak RSS {result['rss_self']:.0f} MiB + workers {result['rss_children']:.0f} MiB; "
                f"+{result['wait']:.0f} s end-of-stream wait")
        big = write_hub_shards(specs, scratch / "shards10x", copies=10)
        result = peak_rss_of_streamed_pass(big, 2)
        row("hfspeech pretraining, streamed Hub parquet, 10x (80 shards)", 2, result["wall"], 10 * seconds,
            result["delivered"], f"peak RSS {result['rss_self']:.0f} MiB + workers {result['rss_children']:.0f} MiB; "
            f"+{result['wait']:.0f} s end-of-stream wait")
    results["rows"] = rows
    write_report(results, options.output)


def write_report(results: dict, output: str) -> None:
    lines = [
        "# Input-pipeline throughput (audio-seconds per second per CPU core)", "",
        f"Command: `.venv/bin/python benchmarks/data_throughput.py` ({time.strftime('%Y-%m-%d')}). "
        f"{results['files']} real FLAC files, {results['audio_hours']:.2f} h (AN4 train, LibriSpeech clips, "
        f"speechocean762 train; fine-tuning: the labeled two), {results['cores']} cores, 1 torch thread per process.", "",
        f"Bare decode limit, one process: soundfile {results['bare_soundfile']:.0f} audio-s/s"
        + (f", torchcodec {results['bare_torchcodec']:.0f} audio-s/s" if results.get("bare_torchcodec") else "")
        + f"; soundfile on the labeled corpora alone (fine-tuning's limit) {results['bare_soundfile_labeled']:.0f}.", "",
        "| pipeline | workers | wall s | audio-s/s | per core | of bare limit | delivered audio-s/s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        delivered = "" if r["delivered_per_s"] is None else f"{r['delivered_per_s']:.0f}"
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['wall_s']:.1f} | {r['audio_s_per_s']:.0f} | "
                     f"{r['per_core']:.0f} | {100 * r['of_limit']:.0f} % | {delivered} | {r['note']} |")
    lines += ["", "audio-s/s counts the source audio decoded per second; delivered counts the audio in the batches "
              "(after pretraining's crops to the shortest utterance of a batch).", ""]
    Path(output).write_text("\n".join(lines) + "\n")
    Path(output).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

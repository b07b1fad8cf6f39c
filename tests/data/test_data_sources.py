"""Sources: LibriSpeech (local, Libri-light, Hub schema), audiofolder, plain folders, manifests.

References are independent: soundfile for native samples and durations, librosa (soxr)
for resampling, the transcript files themselves for texts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import datasets
import librosa
import numpy as np
import pytest
import soundfile

from hfspeech.data import load_source
from hfspeech.data.sources import detect_source_kind
from helpers import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "data"
LIBRISPEECH = FIXTURES / "librispeech"
CHAPTER = LIBRISPEECH / "LibriSpeech" / "train-clean-100" / "103" / "1240"
AN4 = FIXTURES / "an4"
FSDD = FIXTURES / "fsdd"


def transcripts() -> dict[str, str]:
    lines = (CHAPTER / "103-1240.trans.txt").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines)


def test_librispeech_native_layout_map_style():
    expected = transcripts()
    dataset = load_source(str(LIBRISPEECH))
    assert isinstance(dataset, datasets.Dataset)
    assert sorted(dataset["id"]) == sorted(expected)
    for example in dataset:
        reference, rate = soundfile.read(CHAPTER / f"{example['id']}.flac", dtype="float32")
        assert rate == 16000
        assert example["text"] == expected[example["id"]]
        assert example["speaker_id"] == "103"
        assert example["audio"].dtype == np.float32 and example["audio"].ndim == 1
        np.testing.assert_allclose(example["audio"], reference, atol=1e-6)
        assert example["duration"] == pytest.approx(len(reference) / 16000)
        assert example["sampling_rate"] == 16000


def test_librispeech_streaming_matches_map_style_and_split_names():
    mapped = {e["id"]: e for e in load_source(str(LIBRISPEECH), split="train-clean-100")}
    streamed = load_source(str(LIBRISPEECH / "LibriSpeech"), split="train.clean.100", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    seen = 0
    for example in streamed:
        np.testing.assert_array_equal(example["audio"], mapped[example["id"]]["audio"])
        assert example["duration"] == pytest.approx(mapped[example["id"]]["duration"])
        assert example["text"] == mapped[example["id"]]["text"]
        seen += 1
    assert seen == len(mapped) == 3
    with pytest.raises(ValueError, match="no split folder 'dev-clean'.*train-clean-100"):
        load_source(str(LIBRISPEECH), split="dev-clean")


def test_librispeech_file_list_selects_subset(tmp_path):
    ids = sorted(transcripts())
    listing = tmp_path / "subset.txt"
    listing.write_text(f"{ids[2]}\ntrain-clean-100/103/1240/{ids[0]}.flac\n")
    dataset = load_source(str(LIBRISPEECH), file_list=str(listing))
    assert dataset["id"] == [ids[2], ids[0]]
    listing.write_text("103-1240-9999\n")
    with pytest.raises(ValueError, match="103-1240-9999"):
        load_source(str(LIBRISPEECH), file_list=str(listing))


def test_librilight_limited_subsets(tmp_path):
    root = tmp_path / "librispeech_finetuning"
    ids = sorted(transcripts())
    lines = transcripts()
    for folder, utterance in (("1h/0/clean", ids[0]), ("1h/1/other", ids[1]), ("9h/clean", ids[2])):
        chapter = root / folder / "103" / "1240"
        chapter.mkdir(parents=True)
        shutil.copy(CHAPTER / f"{utterance}.flac", chapter)
        (chapter / "103-1240.trans.txt").write_text(f"{utterance} {lines[utterance]}\n")
    assert detect_source_kind(str(root)) == "librilight"
    assert load_source(str(root), split="10min")["id"] == [ids[0]]
    assert sorted(load_source(str(root), split="1h")["id"]) == ids[:2]
    assert sorted(load_source(str(root), split="10h")["id"]) == ids
    with pytest.raises(ValueError, match="unknown Libri-light subset"):
        load_source(str(root), split="2h")


def test_audiofolder_an4():
    dataset = load_source(str(AN4))
    assert detect_source_kind(str(AN4)) == "audiofolder"
    rows = (AN4 / "metadata.csv").read_text().splitlines()[1:]
    assert len(dataset) == len(rows) == 6
    assert sorted(set(dataset["speaker_id"])) == ["fash", "fbbh"]
    by_id = {e["id"]: e for e in dataset}
    example = by_id["fbbh/an87-fbbh-b"]
    assert example["text"] == "ENTER SIX TWO FOUR"
    reference, rate = soundfile.read(AN4 / "fbbh" / "an87-fbbh-b.flac", dtype="float32")
    assert rate == 16000
    np.testing.assert_allclose(example["audio"], reference, atol=1e-6)


def test_fsdd_8khz_is_resampled_once_and_matches_librosa(caplog):
    with caplog.at_level(logging.INFO, logger="hfspeech.data"):
        dataset = load_source(str(FSDD))
        examples = list(dataset)
    messages = [r.getMessage() for r in caplog.records if "resampled to 16000 Hz" in r.getMessage()]
    assert len(messages) == 1, messages  # reported once, not per file
    assert set(dataset["sampling_rate"]) == {8000}
    for example in examples:
        native, rate = soundfile.read(FSDD / f"{example['id']}.wav", dtype="float32")
        assert rate == 8000
        assert len(example["audio"]) == 2 * len(native)
        assert example["duration"] == pytest.approx(len(native) / 8000)
        reference = librosa.resample(native, orig_sr=8000, target_sr=16000, res_type="soxr_hq")
        assert np.corrcoef(reference, example["audio"])[0, 1] > 0.999
        assert np.abs(reference - example["audio"]).max() < 0.02


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    rng = np.random.RandomState(0)
    time = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * time) + 0.01 * rng.randn(time.size)
    right = 0.3 * np.sin(2 * np.pi * 660 * time)
    folder = tmp_path / "stereo"
    folder.mkdir()
    soundfile.write(folder / "tone.wav", np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    example = load_source(str(folder))[0]
    assert "text" not in example and example["sampling_rate"] == 44100
    reference = librosa.resample(((left + right) / 2).astype(np.float32), orig_sr=44100, target_sr=16000)
    assert abs(len(example["audio"]) - len(reference)) <= 1
    n = min(len(reference), len(example["audio"]))
    assert np.corrcoef(reference[:n], example["audio"][:n])[0, 1] > 0.999


def test_plain_directory_is_unlabeled(tmp_path):
    folder = tmp_path / "clips"
    shutil.copytree(FSDD, folder)
    (folder / "metadata.csv").unlink()
    dataset = load_source(str(folder))
    assert detect_source_kind(str(folder)) == "directory"
    assert "text" not in dataset.column_names
    assert sorted(dataset["id"]) == sorted(p.stem for p in FSDD.glob("*.wav"))
    assert sum(dataset["duration"]) == pytest.approx(sum(soundfile.info(p).duration for p in FSDD.glob("*.wav")))


@pytest.mark.parametrize("suffix,delimiter", [(".tsv", "\t"), (".csv", ",")])
def test_manifest(tmp_path, suffix, delimiter):
    lines = transcripts()
    manifest = tmp_path / f"train{suffix}"
    rows = [delimiter.join(["path", "text", "duration"])]
    for utterance, text in sorted(lines.items()):
        path = CHAPTER / f"{utterance}.flac"
        rows.append(delimiter.join([str(path), text, f"{soundfile.info(path).duration:.3f}"]))
    manifest.write_text("\n".join(rows) + "\n")
    dataset = load_source(str(manifest))
    assert sorted(dataset["id"]) == sorted(lines) and set(dataset["text"]) == set(lines.values())
    rows[1] = rows[1].rsplit(delimiter, 1)[0] + delimiter + "99.0"
    manifest.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"train.*:2: manifest duration 99.000"):
        load_source(str(manifest))


# --- the Hub schema, offline -------------------------------------------------------------------

HUB_FEATURES = datasets.Features({
    "file": datasets.Value("string"),
    "audio": datasets.Audio(sampling_rate=16000),
    "text": datasets.Value("string"),
    "speaker_id": datasets.Value("int64"),
    "chapter_id": datasets.Value("int64"),
    "id": datasets.Value("string"),
})


def write_hub_shards(folder: Path) -> list[str]:
    """Two parquet shards in ``openslr/librispeech_asr``'s schema, audio embedded as FLAC bytes."""
    lines = transcripts()
    shards = []
    for index, utterances in enumerate((sorted(lines)[:2], sorted(lines)[2:])):
        table = datasets.Dataset.from_dict({
            "file": [f"{u}.flac" for u in utterances],
            "audio": [{"bytes": (CHAPTER / f"{u}.flac").read_bytes(), "path": f"{u}.flac"} for u in utterances],
            "text": [lines[u] for u in utterances],
            "speaker_id": [103] * len(utterances),
            "chapter_id": [1240] * len(utterances),
            "id": utterances,
        }, features=HUB_FEATURES)
        path = folder / f"train.100-{index:05d}-of-00002.parquet"
        table.to_parquet(str(path))
        shards.append(str(path))
    return shards


@pytest.mark.parametrize("streaming", [True, False])
def test_hub_schema_from_local_parquet_shards(tmp_path, streaming):
    shards = write_hub_shards(tmp_path)
    dataset = load_source("librispeech:clean/train.100", streaming=streaming, data_files=shards)
    examples = {e["id"]: e for e in dataset}
    assert sorted(examples) == sorted(transcripts())
    # the directory of shards is a source of its own (what train_data can name)
    assert detect_source_kind(str(tmp_path)) == "parquet"
    assert sorted(e["id"] for e in load_source(str(tmp_path), streaming=streaming)) == sorted(transcripts())
    for utterance, example in examples.items():
        reference, _ = soundfile.read(CHAPTER / f"{utterance}.flac", dtype="float32")
        np.testing.assert_allclose(example["audio"], reference, atol=1e-6)
        assert example["duration"] == pytest.approx(len(reference) / 16000)
        assert example["speaker_id"] == "103" and example["text"] == transcripts()[utterance]


def test_hub_call_uses_the_real_repository(tmp_path, monkeypatch):
    shards = write_hub_shards(tmp_path)
    calls = []
    real_load = datasets.load_dataset

    def fake_load(path, *args, **kwargs):
        calls.append((path, args, kwargs))
        return real_load("parquet", data_files={kwargs["split"]: shards}, split=kwargs["split"], streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    dataset = load_source("librispeech:all/train.clean.100", streaming=True)
    assert len(list(dataset)) == 3
    assert calls == [("openslr/librispeech_asr", ("all",), {"split": "train.clean.100", "streaming": True})]
    with pytest.raises(ValueError, match="has no split 'train.500'.*train.100"):
        load_source("librispeech:clean/train.500")
    with pytest.raises(ValueError, match="unknown LibriSpeech config 'noisy'"):
        load_source("librispeech:noisy/test")


def test_concatenated_and_extended_datasets_still_decode():
    fsdd, an4 = load_source(str(FSDD)), load_source(str(AN4))
    combined = datasets.concatenate_datasets([fsdd, an4])
    assert len(combined) == 12
    reference, _ = soundfile.read(AN4 / "fash" / "an251-fash-b.flac", dtype="float32")
    index = list(combined["id"]).index("fash/an251-fash-b")
    np.testing.assert_allclose(combined[index]["audio"], reference, atol=1e-6)
    with_labels = an4.add_column("labels", [[1, 2]] * len(an4))
    assert with_labels[0]["audio"].dtype == np.float32 and with_labels[0]["labels"] == [1, 2]


def test_labeled_and_unlabeled_sources_together_still_decode(tmp_path):
    """An unlabeled directory next to a labeled audiofolder (different columns): `datasets` drops
    the decoding transform when concatenating such parts; `load_sources` puts it back."""
    from hfspeech.training.arguments import load_sources

    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    shutil.copy(AN4 / "fash" / "an251-fash-b.flac", unlabeled / "clip.flac")
    combined = load_sources(f"{unlabeled},{AN4}")
    assert len(combined) == 1 + len(load_source(str(AN4)))
    reference, _ = soundfile.read(unlabeled / "clip.flac", dtype="float32")
    first = combined[0]
    assert isinstance(first["audio"], np.ndarray) and first["text"] is None
    np.testing.assert_allclose(first["audio"], reference, atol=1e-6)
    assert all(isinstance(example["audio"], np.ndarray) for example in combined)


def test_reading_columns_and_dropping_short_utterances_decode_no_audio(monkeypatch):
    """``dataset["duration"]`` runs the decoding transform over every row; the library's own
    column reads (durations for buckets, ids, the short-utterance filter, evaluation's texts)
    must not decode a single file."""
    import hfspeech.data.records as records
    from hfspeech.data import drop_short_utterances, plain_column

    dataset = load_source(str(AN4))
    decoded = []
    original = records.decode_audio
    monkeypatch.setattr(records, "decode_audio", lambda *a, **k: decoded.append(1) or original(*a, **k))
    list(dataset["duration"])
    assert len(decoded) == len(dataset)  # the trap plain_column avoids
    decoded.clear()
    assert plain_column(dataset, "id") == [e["id"] for e in dataset.with_format(None)]
    durations = plain_column(dataset, "duration")
    kept, dropped = drop_short_utterances(dataset, min_samples=int(sorted(durations)[2] * 16000))
    assert (len(kept), dropped) == (len(dataset) - 2, 2)
    assert decoded == []
    assert kept[0]["audio"].dtype == np.float32  # still decodes on access

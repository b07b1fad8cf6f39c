"""A small spoken-command corpus synthesised with flite, with phone alignments.

Sentences come from a few templates ("SET AN ALARM FOR SEVEN THIRTY", "CALL MARY ON LINE
FOUR", ...): a closed grammar, so a 4-gram LM built on the training transcripts has
structure to contribute, while slot fillers keep the acoustics varied. Each sentence is
spoken by flite's 16 kHz voices (slt, rms, awb, kal16) with random speaking rate and
pitch; one voice is held out as the speaker-disjoint dev set. flite's ``-psdur`` phone
end times are stored as TIMIT-style ``.phn`` files for PNMI.
"""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile

TEMPLATES = [
    "SET AN ALARM FOR {hour} {minute}",
    "CALL {name} ON LINE {digit}",
    "SEND A MESSAGE TO {name}",
    "PLAY {genre} MUSIC IN THE {room}",
    "TURN {state} THE LIGHTS IN THE {room}",
    "WHAT IS THE WEATHER IN {city}",
    "REMIND ME TO CALL {name} AT {hour}",
    "OPEN THE {room} DOOR",
]
SLOTS = {
    "hour": ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN", "ELEVEN", "TWELVE"],
    "minute": ["O'CLOCK", "FIFTEEN", "THIRTY", "FORTY FIVE"],
    "name": ["MARY", "JOHN", "PETER", "ANNA", "DAVID", "SARAH", "MICHAEL", "LAURA"],
    "digit": ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"],
    "genre": ["JAZZ", "ROCK", "CLASSICAL", "FOLK", "BLUES"],
    "room": ["KITCHEN", "BEDROOM", "GARAGE", "OFFICE", "HALLWAY"],
    "state": ["ON", "OFF"],
    "city": ["BOSTON", "LONDON", "PARIS", "DENVER", "MADRID", "TORONTO"],
}
TRAIN_VOICES = ("slt", "rms", "awb")
DEV_VOICE = "kal16"


def random_sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return template.format(**{slot: rng.choice(values) for slot, values in SLOTS.items()})


def synthesize(text: str, voice: str, wav_path: Path, stretch: float, pitch: float) -> list[tuple[int, int, str]]:
    """Speak ``text`` with flite into ``wav_path`` (16 kHz); return phone segments in samples."""
    if shutil.which("flite") is None:
        raise FileNotFoundError("flite is not installed: run `bash scripts/install_system_packages.sh` (Debian flite).")
    printed = subprocess.run(
        ["flite", "-voice", voice, "-t", text.lower(), "-o", str(wav_path), "-psdur",
         "--setf", f"duration_stretch={stretch:.3f}", "--setf", f"int_f0_target_mean={pitch:.1f}"],
        check=True, capture_output=True, text=True).stdout
    audio, rate = soundfile.read(wav_path, dtype="float32")
    if rate != 16000:
        raise ValueError(f"flite voice {voice} produced {rate} Hz audio; the demo needs 16 kHz voices.")
    segments, start = [], 0
    items = [item.rsplit(":", 1) for item in printed.split()]
    for index, (phone, end_seconds) in enumerate(items):
        end = len(audio) if index == len(items) - 1 else min(len(audio), round(float(end_seconds) * 16000))
        if end > start:
            segments.append((start, end, phone))
            start = end
    return segments


def build_corpus(output_dir: Path, train_sentences: int = 160, dev_sentences: int = 40, seed: int = 0,
                 dev_voices: tuple[str, ...] = (DEV_VOICE,), exclude_dev: frozenset[str] = frozenset()) -> dict:
    """Write ``train/`` and ``dev/`` audiofolders (metadata.csv + FLAC) and ``alignments/*.phn``.

    Every training sentence is spoken by each training voice; dev sentences (new draws from
    the grammar) by each of ``dev_voices`` (default: the held-out voice). Dev sentences in
    ``exclude_dev`` (e.g. another corpus's training transcripts) are drawn again.
    Returns counts and durations.
    """
    rng = random.Random(seed)
    return {"train": build_split(output_dir, "train", TRAIN_VOICES, train_sentences, rng),
            "dev": build_split(output_dir, "dev", tuple(dev_voices), dev_sentences, rng, exclude_dev)}


def build_split(output_dir: Path, split: str, voices: tuple[str, ...], sentences: int, rng: random.Random,
                exclude: frozenset[str] = frozenset()) -> dict:
    """Write one audiofolder ``output_dir/split`` (+ ``alignments/*.phn`` and ``split_transcripts.txt``):
    ``sentences`` draws from the grammar (never one in ``exclude``), each spoken by every voice."""
    alignments = output_dir / "alignments"
    alignments.mkdir(parents=True, exist_ok=True)
    folder = output_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    rows, seconds = [], 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(sentences):
            text = random_sentence(rng)
            for _ in range(10_000):
                if text not in exclude:
                    break
                text = random_sentence(rng)
            else:
                raise ValueError(f"every {split} sentence drawn is excluded (exclude_dev): the grammar has too few others.")
            for voice in voices:
                name = f"{split}-{voice}-{number:04d}"
                wav = Path(scratch) / f"{name}.wav"
                segments = synthesize(text, voice, wav, stretch=rng.uniform(0.85, 1.2), pitch=rng.uniform(90, 180))
                audio, _ = soundfile.read(wav, dtype="float32")
                audio = audio + np.random.default_rng(rng.randrange(2**32)).normal(0, 0.002, len(audio)).astype(np.float32)
                soundfile.write(folder / f"{name}.flac", audio, 16000)
                (alignments / f"{name}.phn").write_text("".join(f"{s} {e} {p}\n" for s, e, p in segments))
                rows.append({"file_name": f"{name}.flac", "text": text, "speaker_id": voice})
                seconds += len(audio) / 16000
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "text", "speaker_id"])
        writer.writeheader()
        writer.writerows(rows)
    (output_dir / f"{split}_transcripts.txt").write_text("".join(row["text"] + "\n" for row in rows))
    return {"utterances": len(rows), "minutes": seconds / 60, "voices": list(voices)}

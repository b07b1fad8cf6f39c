"""torchaudio's Kaldi MFCC for the fairseq-recipe side of `benchmarks/targets.py`.

fairseq's ``examples/hubert/simple_kmeans/dump_mfcc_feature.py`` computes, per utterance,
``torchaudio.compliance.kaldi.mfcc(waveform, sample_frequency=16000, use_energy=False)``
and two ``torchaudio.functional.compute_deltas``. No torchaudio release matches
torch 2.13.0 (PyPI's newest is 2.11.1, ``Requires-Dist: torch>=2.11``), and PyPI's
manylinux wheel is the CUDA build: its C++ extension needs ``libc10_cuda.so``, so
``import torchaudio`` fails with the CPU torch. The MFCC code itself is pure Python on
torch ops, so this module imports torchaudio from a wheel file with the extension loader
disabled (nothing is installed; the wheel is unpacked into a cache directory):

    pip download --no-deps torchaudio==2.11.1 -d /tmp/torchaudio_wheel
    .venv/bin/python benchmarks/targets.py --torchaudio-wheel /tmp/torchaudio_wheel/torchaudio-2.11.1-*.whl
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from types import ModuleType


def import_torchaudio_from_wheel(wheel: str | Path, cache_dir: str | Path) -> ModuleType:
    """Unpack ``wheel``'s Python files into ``cache_dir`` and import torchaudio without its extension."""
    wheel, cache_dir = Path(wheel), Path(cache_dir)
    if not wheel.is_file():
        raise FileNotFoundError(f"{wheel} not found; get it with `pip download --no-deps torchaudio==2.11.1 -d DIR`")
    target = cache_dir / wheel.stem
    if not (target / "torchaudio" / "compliance" / "kaldi.py").is_file():
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target, [n for n in archive.namelist() if n.endswith(".py")])  # no .so files
    sys.path.insert(0, str(target))
    import torchaudio  # without the .so files, _extension finds no library and skips loading it

    return torchaudio


def fairseq_mfcc(torchaudio: ModuleType):
    """dump_mfcc_feature.py's MfccFeatureReader.get_feats on a loaded waveform: (S,) -> (T, 39)."""
    import torch

    def get_feats(waveform) -> torch.Tensor:
        with torch.no_grad():
            x = torch.from_numpy(waveform).float().view(1, -1)
            mfccs = torchaudio.compliance.kaldi.mfcc(waveform=x, sample_frequency=16000, use_energy=False)
            mfccs = mfccs.transpose(0, 1)  # (freq, time)
            deltas = torchaudio.functional.compute_deltas(mfccs)
            ddeltas = torchaudio.functional.compute_deltas(deltas)
            concat = torch.cat([mfccs, deltas, ddeltas], dim=0)
            return concat.transpose(0, 1).contiguous()

    return get_feats

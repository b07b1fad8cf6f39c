"""Per-thread scratch tensors reused across calls by the MFCC and k-means kernels.

A labelling pass works group after group (200 s of audio each); allocating its buffers afresh
every time made the process fault the pages in again and again (glibc hands large freed blocks
back to the kernel), which cost more than the arithmetic on them. One 200 s group needs ~17 MB
of MFCC scratch (signal, FFT buffer, cepstra of every hop) and a (4,096, K) distance block.
"""

from __future__ import annotations

import threading

import torch

_BUFFERS = threading.local()


def scratch(name: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32,
            zero: bool = False) -> torch.Tensor:
    """A tensor of ``shape`` that later calls in this thread with the same ``name`` reuse.

    Contents are undefined unless ``zero``: then the buffer is zeroed when first allocated only
    (callers rely on regions they never write staying zero). The buffer grows with 25 % headroom
    when a call asks for more rows; the first dimension of the result is exactly ``shape[0]``.
    """
    key = (name, device, dtype, shape[1:])
    buffers = _BUFFERS.__dict__.setdefault("buffers", {})
    buffer = buffers.get(key)
    if buffer is None or buffer.shape[0] < shape[0]:  # with headroom: group sizes vary a little
        rows = max(shape[0] * 5 // 4, 1 if buffer is None else buffer.shape[0] * 5 // 4)
        buffer = (torch.zeros if zero else torch.empty)((rows,) + shape[1:], device=device, dtype=dtype)
        buffers[key] = buffer
    return buffer[: shape[0]]

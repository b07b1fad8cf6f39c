"""Where ``forward`` may read tensor values on the host: on CPU tensors, never on a GPU.

Input checks ("labels lie in [0, vocab_size)", "no utterance is shorter than the receptive
field") and shortcuts ("this batch has no padding") read tensor values in Python. On a CPU
that is free; on a GPU it waits for every queued kernel (a host synchronisation that starves
the device), and under ``torch.compile`` it breaks the graph. So the models read values only
where `host_reads_allowed` says so (CPU tensors in eager mode) and otherwise compute with
shapes known from the padded batch alone (``tests/modeling/test_host_syncs.py`` counts the
reads of each forward pass). The training loops' collators and tokenizers build inputs that
pass the checks, which the CPU tests exercise; `no_host_reads` gives a CPU run the GPU path.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

__all__ = ["host_reads_allowed", "no_host_reads"]

_forbidden = contextvars.ContextVar("hfspeech_no_host_reads", default=False)


def host_reads_allowed(tensor: torch.Tensor) -> bool:
    """True when reading ``tensor``'s values costs nothing: a CPU tensor in eager mode, outside `no_host_reads`."""
    return not torch.compiler.is_compiling() and tensor.device.type == "cpu" and not _forbidden.get()


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Run forward passes as on a GPU: no input checks or shortcuts that read tensor values."""
    token = _forbidden.set(True)
    try:
        yield
    finally:
        _forbidden.reset(token)

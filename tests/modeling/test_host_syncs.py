"""The GPU path of every forward and backward pass reads no tensor value on the host.

On a GPU, ``.item()``/``int()``/``bool()`` of a tensor, ``nonzero``, boolean indexing,
``masked_select``, ``unique`` and ``bincount`` wait for the device (their result or its
shape is data-dependent). A dispatch mode sees every aten op of a CPU run, so it counts those
ops exactly; `no_host_reads` makes the models take the path they take on a GPU. The same
seeds must give the same losses on both paths (the CPU path only adds checks and shortcuts).
Not visible here: on a GPU, torch's own ``ctc_loss`` copies the (B,) length tensors to the host
(it sizes its alpha table from the longest target), one small read per CTC step.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.fast_cpu import FAST_CPU_ENV
from hfspeech.modeling.host_reads import no_host_reads
from hfspeech.modeling.models import SpeechEncoderForCTC
from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining

aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default,
         aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
         aten.unique_consecutive.default, aten.bincount.default, aten.repeat_interleave.Tensor}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class HostReads(TorchDispatchMode):
    """Names every aten op whose result depends on reading tensor values on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in INDEXING and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in args[1])
        if func in READS or boolean_index:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def tiny(**overrides) -> SpeechEncoderConfig:
    return SpeechEncoderConfig.from_preset("tiny", **overrides)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two padded utterances (1.0 s and 0.7 s)."""
    generator = torch.Generator().manual_seed(seed)
    waveforms = torch.randn(2, 16000, generator=generator)
    attention_mask = torch.ones(2, 16000, dtype=torch.long)
    attention_mask[1, 11200:] = 0
    return waveforms * attention_mask, attention_mask


def pretraining_step(objective: str) -> tuple[torch.Tensor, list[str]]:
    torch.manual_seed(0)
    config = tiny(objective=objective, mask_time_prob=0.65, mask_time_length=5, layerdrop=0.0,
                  **({"hubert_num_clusters": [7, 5], "label_rate": 100} if objective == "hubert" else {}))
    model = SpeechEncoderForPreTraining(config).train()
    waveforms, attention_mask = batch()
    labels = None
    if objective == "hubert":  # two label sets at 100 Hz, the second utterance's shorter and padded
        labels = [torch.randint(0, k, (2, 100), generator=torch.Generator().manual_seed(k)) for k in (7, 5)]
        for label_set in labels:
            label_set[1, 70:] = -100
    with HostReads() as recorder:
        output = model(waveforms, attention_mask=attention_mask, labels=labels,
                       generator=torch.Generator().manual_seed(1))
        output.loss.backward()
    return output.loss.detach(), recorder.reads


def ctc_step() -> tuple[torch.Tensor, list[str]]:
    torch.manual_seed(0)
    model = SpeechEncoderForCTC(tiny(vocab_size=12, layerdrop=0.0, mask_time_prob=0.3, mask_time_length=4)).train()
    waveforms, attention_mask = batch()
    labels = torch.tensor([[3, 4, 5, 6, 4], [7, 8, 9, -100, -100]])
    with HostReads() as recorder:
        output = model(waveforms, attention_mask=attention_mask, labels=labels)
        output.loss.backward()
    return output.loss.detach(), recorder.reads


@pytest.mark.parametrize("step", ["wav2vec2", "hubert", "ctc"])
def test_gpu_path_reads_no_values_and_gives_the_cpu_paths_loss(step, monkeypatch):
    monkeypatch.setenv(FAST_CPU_ENV, "0")  # the plain modules, as a GPU runs them (the fast CPU ones read lengths)
    run = ctc_step if step == "ctc" else lambda: pretraining_step(step)
    cpu_loss, cpu_reads = run()
    with no_host_reads():
        gpu_loss, gpu_reads = run()
    assert cpu_reads, "the counter must see the CPU path's checks (or it counts nothing)"
    assert gpu_reads == []
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step", ["wav2vec2", "hubert", "ctc"])
def test_bf16_autocast_keeps_the_losses_in_fp32(step, monkeypatch):
    """Under bf16 autocast (a GPU's mixed precision) logits, log-softmax and cosines stay fp32:
    the loss is fp32, finite and within bf16's rounding of the fp32 loss."""
    monkeypatch.setenv(FAST_CPU_ENV, "0")
    run = ctc_step if step == "ctc" else lambda: pretraining_step(step)
    full, _ = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = run()
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    torch.testing.assert_close(mixed, full, rtol=0.03, atol=0.0)

"""``torch.compile`` of the three training models: one graph each, the eager loss and gradients,
and few compilations over batches of changing size.

The backend is ``aot_eager``: dynamo's graph capture and AOTAutograd's joint forward/backward
graph, the graphs inductor compiles on a GPU, run by the eager kernels (inductor's C++ build
of one graph takes over 10 minutes on this 2-core machine; the device check runs it on a GPU).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from hfspeech.configuration import SpeechEncoderConfig
from hfspeech.modeling.fast_cpu import FAST_CPU_ENV
from hfspeech.modeling.models import SpeechEncoderForCTC
from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "ctc":
        config = SpeechEncoderConfig.from_preset("tiny", vocab_size=12, mask_time_prob=0.3, mask_time_length=4)
        return SpeechEncoderForCTC(config).train()
    config = SpeechEncoderConfig.from_preset("tiny", objective=kind, mask_time_prob=0.65, mask_time_length=5,
                                             **({"label_rate": 100} if kind == "hubert" else {}))
    return SpeechEncoderForPreTraining(config).train()


def inputs(kind: str, batch_size: int, samples: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch_size * samples)
    attention_mask = torch.ones(batch_size, samples, dtype=torch.long)
    attention_mask[-1, samples * 7 // 10:] = 0  # one padded utterance
    batch = {"input_values": torch.randn(batch_size, samples, generator=generator) * attention_mask,
             "attention_mask": attention_mask}
    if kind == "hubert":
        labels = torch.randint(0, 100, (batch_size, samples // 160), generator=generator)
        labels[-1, samples * 7 // 10 // 160:] = -100
        batch["labels"] = labels
    if kind == "ctc":
        batch["labels"] = torch.randint(1, 12, (batch_size, 4), generator=generator)
    return batch


def step(model: torch.nn.Module, batch: dict[str, torch.Tensor], seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and gradients of one training step, dropout and masks drawn from ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def compiled_and_eager(kind: str, shapes: list[tuple[int, int]]) -> int:
    """Run compiled and eager on each shape, check they agree; return the number of compiled graphs."""
    torch.compiler.reset()  # dynamo's caches and dynamic-shape marks are per code object, shared across tests
    model = build(kind)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    for index, (batch_size, samples) in enumerate(shapes):
        batch = inputs(kind, batch_size, samples)
        eager_loss, eager_grads = step(model, batch, seed=index)
        compiled_loss, compiled_grads = step(compiled, batch, seed=index)
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-4)
        assert len(compiled_grads) == len(eager_grads) > 0
        for got, expected in zip(compiled_grads, eager_grads):
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
    return counter.frame_count


@pytest.mark.parametrize("kind, graphs", [("hubert", 1), ("ctc", 3)])
def test_few_graphs_with_the_eager_loss_and_gradients(kind, graphs, monkeypatch):
    """HuBERT: no graph break in forward + backward. CTC: backbone and head in one graph, then
    torch's ``ctc_loss`` between two graphs (dynamo cannot trace it: the shape of its alpha
    table depends on the target lengths' values)."""
    monkeypatch.setenv(FAST_CPU_ENV, "0")  # the plain modules (dynamo traces what a GPU runs)
    assert compiled_and_eager(kind, [(2, 16000)]) == graphs


def test_wav2vec2_compiles_three_times_for_any_number_of_batch_shapes(monkeypatch):
    """Batch size and length change from batch to batch (duration buckets, crops): dynamo compiles
    the first shape, then a graph with a dynamic batch size, then one with a dynamic length too,
    which serves every later shape: no recompilation per bucket."""
    monkeypatch.setenv(FAST_CPU_ENV, "0")
    shapes = [(2, 16000), (3, 16000), (2, 24000), (4, 8000), (3, 12800)]
    assert compiled_and_eager("wav2vec2", shapes) == 3

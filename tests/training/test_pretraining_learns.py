"""Both objectives learn on a fixed batch of real speech (AN4) with a tiny model.

A few dozen updates on one batch: the loss must fall and the prediction accuracy rise,
and the wav2vec 2.0 codebook must not collapse (perplexity above half of G*V). The batch
is fixed including its masks and negatives (one seed): with fresh masks every step a
tiny wav2vec 2.0 model stays at chance (loss ln(K+1)) for far more than 40 updates, which
would make this a test of patience rather than of the gradients.
"""

from __future__ import annotations

import pytest
import torch
from helpers.pretrain_run import global_batches

from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining


def train_on_fixed_batch(objective: str, steps: int = 40):
    torch.manual_seed(0)
    config = SpeechEncoderConfig.from_preset(
        "tiny", objective=objective, hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, layerdrop=0.0, num_negatives=20, hubert_num_clusters=[100],
        # a 2-utterance batch has ~130 masked frames: a 2 x 32 codebook lets "perplexity above
        # half of G*V" mean something (the paper's 2 x 320 would need thousands of frames)
        num_codevectors_per_group=32, codevector_dim=32, proj_codevector_dim=32)
    model = SpeechEncoderForPreTraining(config).train()
    batch = global_batches(objective)[0]
    if objective == "hubert":
        # targets with real structure: k-means-like ids from the batch's own log-energy, 4 levels per frame
        frames = batch["labels"].shape[1]
        energy = batch["input_values"][:, : frames * 320].reshape(2, frames, 320).pow(2).mean(-1).log()
        bins = torch.quantile(energy[batch["labels"] >= 0], torch.tensor([0.25, 0.5, 0.75]))
        batch["labels"] = torch.where(batch["labels"] >= 0, torch.bucketize(energy, bins), batch["labels"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for step in range(steps):
        generator = torch.Generator().manual_seed(0)
        output = model(**batch, generator=generator)
        loss = output.loss / output.num_masked
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.set_num_updates(step + 1)
        accuracy = output.accuracy if objective == "wav2vec2" else output.masked_accuracy[0]
        perplexity = float(output.codevector_perplexity.detach()) if objective == "wav2vec2" else None
        history.append((float(loss), float(accuracy), perplexity))
    return config, history


@pytest.mark.parametrize("objective", ["wav2vec2", "hubert"])
def test_loss_falls_and_accuracy_rises(objective):
    config, history = train_on_fixed_batch(objective)
    first, last = history[:5], history[-5:]
    mean = lambda rows, column: sum(row[column] for row in rows) / len(rows)  # noqa: E731
    assert mean(last, 0) < 0.7 * mean(first, 0), history
    assert mean(last, 1) > mean(first, 1) + 0.1, history
    if objective == "wav2vec2":
        codebook = config.num_codevector_groups * config.num_codevectors_per_group
        assert min(row[2] for row in history) > 0.5 * codebook, [row[2] for row in history]

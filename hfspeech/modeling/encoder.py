"""Context network: convolutional relative positional embedding + Transformer (SDPA).

Post-LN ("base", ``layer_norm_first=False``) and pre-LN ("large") layer orders, layerdrop
and gradient checkpointing. Padded frames are zeroed before the positional conv and
masked out of attention, so they never influence valid frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..configuration import SpeechEncoderConfig
from .dropout import Dropout, attention
from .host_reads import host_reads_allowed
from .linear import Linear


class PositionalConvEmbedding(nn.Module):
    """Grouped, weight-normalised conv over time (kernel 128, 16 groups) -> GELU.

    Input and output (B, T, H). An even kernel produces one extra frame, which is dropped.
    """

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel, padding=kernel // 2,
                         groups=config.num_conv_pos_embedding_groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove_last = kernel % 2 == 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.conv(hidden.transpose(1, 2))
        if self.remove_last:
            out = out[:, :, :-1]
        return F.gelu(out).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention (SDPA; `dropout.attention` when dropping probabilities). (B, T, H) -> (B, T, H)."""

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_dropout
        self.q_proj = Linear(config.hidden_size, config.hidden_size)
        self.k_proj = Linear(config.hidden_size, config.hidden_size)
        self.v_proj = Linear(config.hidden_size, config.hidden_size)
        self.out_proj = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """key_mask: (B, 1, 1, T) bool, True where a key may be attended to, or None."""
        batch, frames, _ = hidden.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

        out = attention(
            heads(self.q_proj(hidden)), heads(self.k_proj(hidden)), heads(self.v_proj(hidden)),
            key_mask, self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, -1))


class FeedForward(nn.Module):
    """Linear(H, F) -> GELU -> dropout -> Linear(F, H) -> dropout. (B, T, H) -> (B, T, H)."""

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        self.intermediate = Linear(config.hidden_size, config.intermediate_size)
        self.activation_dropout = Dropout(config.activation_dropout)
        self.output = Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = Dropout(config.hidden_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.activation_dropout(F.gelu(self.intermediate(hidden)))
        return self.output_dropout(self.output(hidden))


class EncoderLayer(nn.Module):
    """One Transformer block, post-LN (base) or pre-LN (large, ``layer_norm_first``)."""

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.attention = SelfAttention(config)
        self.dropout = Dropout(config.hidden_dropout)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            hidden = hidden + self.dropout(self.attention(self.attention_norm(hidden), key_mask))
            return hidden + self.feed_forward(self.feed_forward_norm(hidden))
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, key_mask)))
        return self.feed_forward_norm(hidden + self.feed_forward(hidden))


class TransformerEncoder(nn.Module):
    """Positional conv + Transformer layers.

    ``hidden_states`` follow transformers' convention: entry 0 is the input of the first
    layer, entry i the output of layer i (for pre-LN models before the final LayerNorm,
    which only ``last_hidden_state`` gets).
    """

    def __init__(self, config: SpeechEncoderConfig) -> None:
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.layerdrop = config.layerdrop
        self.pos_conv = PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(
        self, hidden: torch.Tensor, frame_mask: torch.Tensor | None, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """hidden: (B, T, H); frame_mask: (B, T) bool valid frames or None. Returns (last, all)."""
        key_mask = None
        if frame_mask is not None:
            hidden = hidden * frame_mask[..., None].to(hidden.dtype)
            # Without padding attention needs no mask (faster kernels); telling reads values (`host_reads`).
            if not (host_reads_allowed(frame_mask) and bool(frame_mask.all())):
                key_mask = frame_mask[:, None, None, :]
        hidden = hidden + self.pos_conv(hidden)
        if not self.layer_norm_first:
            hidden = self.layer_norm(hidden)
        hidden = self.dropout(hidden)
        all_hidden: list[torch.Tensor] = []
        # LayerDrop: one CPU draw per forward (never a device read), so a compiled graph breaks here once.
        dropped = (torch.rand(len(self.layers)) < self.layerdrop).tolist() if self.training and self.layerdrop > 0 \
            else [False] * len(self.layers)
        for layer, drop in zip(self.layers, dropped):
            if output_hidden_states:
                all_hidden.append(hidden)
            if drop:
                continue
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, key_mask, use_reentrant=False)
            else:
                hidden = layer(hidden, key_mask)
        if output_hidden_states:
            all_hidden.append(hidden)
        if self.layer_norm_first:
            hidden = self.layer_norm(hidden)
        return hidden, tuple(all_hidden) if output_hidden_states else None

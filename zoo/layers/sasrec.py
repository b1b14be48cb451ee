"""SASRec user encoder over a left-padded sequence of item embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SASRec", "MASK_VALUE"]

# Finite additive mask: a fully padded row stays finite (uniform attention) instead of NaN,
# in PyTorch and in onnxruntime alike.
MASK_VALUE = -1e9


class _SelfAttention(nn.Module):
    """Multi-head self-attention with bias-free Q/K/V/O projections."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(attention_dropout)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """`x [B, T, D]`, `additive_mask [B, 1, T, T]` -> `[B, T, D]`."""
        batch, length, dim = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        attention = self.dropout(torch.softmax(scores, dim=-1))
        return self.out((attention @ v).transpose(1, 2).reshape(batch, length, dim))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """`[B, T, D] -> [B, heads, T, D / heads]`."""
        return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)


class _Block(nn.Module):
    """Post-LN transformer block: `LN(x + attn(x))`, then `LN(x + FFN(x))`."""

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, dropout: float, attention_dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.attention = _SelfAttention(dim, num_heads, attention_dropout)
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, additive_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class SASRec(nn.Module):
    """Causal self-attention over item embeddings; the user vector is the last position.

    Sequences are left-padded so the newest item sits last. Positions are counted from the
    end (the newest item always gets the last position embedding), so a shorter `T` than
    `max_len` and extra left padding give the same user vector.
    """

    def __init__(
        self,
        dim: int = 64,
        max_len: int = 10,
        num_blocks: int = 2,
        num_heads: int = 2,
        ffn_dim: int = 256,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.mask_value = MASK_VALUE
        self.position = nn.Embedding(max_len, dim)
        self.input_norm = nn.LayerNorm(dim, eps=eps)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(dim, num_heads, ffn_dim, dropout, attention_dropout, eps) for _ in range(num_blocks)
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
        # Small positions, on the scale of item embeddings: a Xavier-sized position table
        # (std ~0.16) would drown the item signal after the input LayerNorm and stall training.
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, item_embeddings: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states `[B, T, D]` for `item_embeddings [B, T, D]` and `padding_mask [B, T]`
        (True where padding); padded positions come out as zeros."""
        length = item_embeddings.shape[1]
        # torch.export reads torch._check as a bound on T; TorchScript compiles no lambda, and
        # torch.jit.trace records `length` as a tensor, which torch._check rejects.
        if torch.jit.is_scripting():
            if length > self.max_len:
                raise ValueError(f"sequence longer than max_len={self.max_len}")
        elif not torch.jit.is_tracing():
            self._check_length(length)
        positions = self.position.weight[self.max_len - length :]
        keep = (~padding_mask).unsqueeze(-1).to(item_embeddings.dtype)
        x = self.input_dropout(self.input_norm(item_embeddings + positions)) * keep
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = causal.unsqueeze(0) & ~padding_mask.unsqueeze(1)
        additive_mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        additive_mask = additive_mask.masked_fill(~allowed, self.mask_value).unsqueeze(1)
        for block in self.blocks:
            x = block(x, additive_mask) * keep
        return x

    @torch.jit.unused
    def _check_length(self, length: int) -> None:
        torch._check(length <= self.max_len, lambda: f"sequence longer than max_len={self.max_len}")

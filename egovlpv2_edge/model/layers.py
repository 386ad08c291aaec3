"""Small reusable layers: attention core, MLP, stochastic depth, additive masks, weight init.

Attention is written with reshape/permute and ``scaled_dot_product_attention`` (no einops, no einsum) so every
graph exports to ONNX with static head layouts; masks are finite (the dtype's lowest value, never ``-inf``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with the default ``1/sqrt(head_dim)`` scale.

    Args:
        q: Queries ``(..., Lq, d)``.
        k: Keys ``(..., Lk, d)``.
        v: Values ``(..., Lk, d)``.
        mask: Optional additive mask broadcastable to ``(..., Lq, Lk)``.

    Returns:
        ``(..., Lq, d)``.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, H*d)`` to ``(B, H, L, d)``."""
    B, L, C = x.shape
    return x.reshape(B, L, heads, C // heads).transpose(1, 2)  # (B, H, L, d)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, d)`` to ``(B, L, H*d)``."""
    B, H, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, H * d)  # (B, L, C)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a ``(B, L)`` 1/0 padding mask into a finite additive ``(B, 1, 1, L)`` mask.

    Kept positions get 0 and padded ones the dtype's lowest finite value, as Hugging Face does.
    """
    m = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, L)
    return (1.0 - m) * torch.finfo(dtype).min


class Mlp(nn.Module):
    """Linear -> GELU (erf) -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``(..., dim)``."""
        return self.fc2(F.gelu(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity in eval mode or with ``p == 0``."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Initialise Linear/Embedding weights N(0, std) (biases 0) and LayerNorm to 1/0, as both backbones do.

    timm truncates at +-2 (absolute), i.e. effectively never for std 0.02, so a plain normal is the same init.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

"""BERT-family post-LayerNorm text backbone with in-backbone gated video-to-text cross-attention.

Implements the text side of EgoVLPv2 (arXiv 2307.05463, Sec. 3.2): a RoBERTa encoder (position offset,
pad id 1, one token type) or a BERT encoder (MiniLM), whose top M layers add
``alpha * CrossAttn(query=self_attn_out, kv=video_tokens)`` to the self-attention output before the
attention LayerNorm (no mask on the video side, no norm in the branch, alpha a scalar initialised to 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from egovlpv2_edge.config import TextConfig
from egovlpv2_edge.model.layers import attend, merge_heads, split_heads


class TextEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm and dropout."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=cfg.pad_id)
        self.position = nn.Embedding(cfg.max_positions, cfg.width)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """RoBERTa: ``cumsum(ids != pad) * (ids != pad) + pad`` (starts at pad+1); BERT: ``0..L-1``."""
        if self.cfg.variant == "roberta":
            keep = input_ids.ne(self.cfg.pad_id).to(torch.int64)
            return torch.cumsum(keep, dim=1) * keep + self.cfg.pad_id
        B, L = input_ids.shape
        return torch.arange(L, device=input_ids.device).unsqueeze(0).expand(B, L)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L)`` to embeddings ``(B, L, Dt)``."""
        x = self.word(input_ids) + self.position(self.position_ids(input_ids))
        x = x + self.token_type.weight[0]  # token type 0 everywhere
        return self.dropout(self.norm(x))


class TextCrossAttention(nn.Module):
    """Gated cross-attention from text queries to video tokens (RoBERTa attention without output LayerNorm)."""

    def __init__(self, width: int, video_width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(video_width, width)
        self.v = nn.Linear(video_width, width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, a: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """``a + gate * out(softmax(q(a) k(video)^T / sqrt(d)) v(video))`` for ``a`` ``(B, L, Dt)``."""
        q = split_heads(self.q(a), self.heads)  # (B, H, L, d)
        k = split_heads(self.k(video), self.heads)  # (B, H, T, d)
        v = split_heads(self.v(video), self.heads)
        out = self.out(merge_heads(attend(q, k, v)))  # (B, L, Dt)
        return a + self.gate * self.dropout(out)


class TextLayer(nn.Module):
    """Post-LN transformer layer; fused when given the video tokens entering the paired video block."""

    def __init__(self, cfg: TextConfig, video_width: int | None = None) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.attn_dropout = cfg.dropout
        self.q = nn.Linear(cfg.width, cfg.width)
        self.k = nn.Linear(cfg.width, cfg.width)
        self.v = nn.Linear(cfg.width, cfg.width)
        self.attn_out = nn.Linear(cfg.width, cfg.width)
        self.attn_norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.fc1 = nn.Linear(cfg.width, cfg.intermediate)
        self.fc2 = nn.Linear(cfg.intermediate, cfg.width)
        self.ffn_norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.cross = None
        if video_width is not None:
            self.cross = TextCrossAttention(cfg.width, video_width, cfg.heads, cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, video: torch.Tensor | None = None) -> torch.Tensor:
        """One layer.

        Args:
            x: Hidden states ``(B, L, Dt)``.
            mask: Additive padding mask ``(B, 1, 1, L)`` or None.
            video: Video tokens ``(B, T, Dv)`` for fused mode, or None (the cross branch is then not executed).
        """
        q, k, v = (split_heads(lin(x), self.heads) for lin in (self.q, self.k, self.v))  # (B, H, L, d)
        p = self.attn_dropout if self.training else 0.0
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        a = self.dropout(self.attn_out(merge_heads(a)))  # (B, L, Dt), no residual yet
        if video is not None and self.cross is not None:
            a = self.cross(a, video)
        h = self.attn_norm(a + x)
        return self.ffn_norm(self.dropout(self.fc2(F.gelu(self.fc1(h)))) + h)


class TextEncoder(nn.Module):
    """Embeddings and layers; the dual text embedding is the first token's final state.

    Args:
        cfg: Text architecture.
        video_width: Width of the video tokens the fused layers attend to.
        num_fused: M, the top layers that get a cross-attention branch.
    """

    def __init__(self, cfg: TextConfig, video_width: int, num_fused: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_fused = num_fused
        self.embeddings = TextEmbeddings(cfg)
        first_fused = cfg.depth - num_fused
        self.layers = nn.ModuleList(TextLayer(cfg, video_width if i >= first_fused else None) for i in range(cfg.depth))

    @property
    def first_fused(self) -> int:
        """Index of the first layer with cross-attention."""
        return self.cfg.depth - self.num_fused

    def run_layers(
        self, x: torch.Tensor, mask: torch.Tensor | None, start: int, end: int, checkpoint: bool = False
    ) -> torch.Tensor:
        """Run layers ``start..end-1`` unfused (their cross-attention branches are not executed)."""
        for layer in self.layers[start:end]:
            if checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        return x

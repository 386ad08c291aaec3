"""Heads of EgoVLPv2 (arXiv 2307.05463, Sec. 3.3): dual-mode projections and the fused-mode VTM and MLM heads.

Projections follow the released code: ``Linear(no bias) -> ReLU -> Linear -> ReLU -> Linear`` (768-4096-4096-4096)
or the EgoVLP 256-d heads (text ``ReLU -> Linear``, video ``Linear``). VTM pools the fused text ``<s>`` and the
fused video CLS through cross-modal transforms and tanh poolers and classifies ``[text; video]`` (class 1 =
match). MLM decodes every fused text token through the shared cross-modal text transform.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from egovlpv2_edge.config import HeadConfig


def _moments(x: torch.Tensor) -> torch.Tensor:
    """``(3, D)``: count, per-channel sum and sum of squares of ``x`` ``(B, D)`` (what processes can sum), in
    float64: the variance is their difference, small beside a large shared offset."""
    x = x.detach().double()
    return torch.stack([torch.full_like(x[0], x.shape[0]), x.sum(0), (x * x).sum(0)])


def build_projection(cfg: HeadConfig, width: int, modality: str) -> nn.Sequential:
    """The joint-space projection for one modality (``"text"`` or ``"video"``)."""
    if cfg.projection == "mlp":
        return nn.Sequential(
            nn.Linear(width, cfg.proj_hidden, bias=False),
            nn.ReLU(),
            nn.Linear(cfg.proj_hidden, cfg.proj_hidden),
            nn.ReLU(),
            nn.Linear(cfg.proj_hidden, cfg.embed_dim),
        )
    if modality == "text":
        return nn.Sequential(nn.ReLU(), nn.Linear(width, cfg.embed_dim))
    return nn.Sequential(nn.Linear(width, cfg.embed_dim))


class Pooler(nn.Module):
    """``tanh(Linear(x))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, dim)``."""
        return torch.tanh(self.dense(x))


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (not tied to the word embeddings) + separate bias."""

    def __init__(self, dim: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, L, dim)`` to vocabulary logits ``(B, L, V)``."""
        return self.decoder(self.norm(F.gelu(self.dense(x)))) + self.bias


class FusionHeads(nn.Module):
    """Cross-modal transforms, poolers, the VTM classifier and the MLM head.

    The cross-modal width is the text width; the video transform projects the video width into it.
    """

    def __init__(self, cfg: HeadConfig, video_width: int, text_width: int, vocab_size: int) -> None:
        super().__init__()
        self.text_transform = nn.Linear(text_width, text_width)
        self.video_transform = nn.Linear(video_width, text_width)
        self.vtm = None
        if cfg.vtm:
            self.text_pooler = Pooler(text_width)
            self.video_pooler = Pooler(text_width)
            self.vtm = nn.Linear(2 * text_width, 2)
        self.mlm = MLMHead(text_width, vocab_size, cfg.mlm_ln_eps) if cfg.mlm else None

    def vtm_logits(self, video_cls: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """VTM logits ``(B, 2)`` from the normalised fused video CLS ``(B, Dv)`` and fused text ``(B, L, Dt)``."""
        if self.vtm is None:
            raise ValueError("this model has no VTM head (heads.vtm is false in its config)")
        text, video = self.vtm_pooler_inputs(video_cls, text_tokens)
        return self.vtm(torch.cat([self.text_pooler(text), self.video_pooler(video)], dim=-1))

    def vtm_pooler_inputs(
        self, video_cls: torch.Tensor, text_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the text and video poolers read: ``(text (B, Dt), video (B, Dt))``."""
        return self.text_transform(text_tokens[:, 0]), self.video_transform(video_cls)

    @torch.no_grad()
    def standardize_poolers(
        self,
        video_cls: torch.Tensor,
        text_tokens: torch.Tensor,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Data-dependent start of the VTM head: each pooler then sees its input standardised per channel.

        The fused text ``<s>`` and video CLS vary little from pair to pair around a large shared offset, so with
        the usual init the poolers' tanh reads almost the same input for every pair and VTM stays at chance
        for hundreds of steps. Folding ``(x - mean) / std`` into each pooler's dense layer (``W <- W / std``,
        ``b <- b - W mean``) changes only where training starts, not the architecture.

        Args:
            video_cls, text_tokens: A batch of pairs' fused outputs, as :meth:`vtm_logits` takes them.
            reduce: Sums the statistics over processes (e.g. an all-reduce), so every process applies the same
                change; None for one process.
        """
        if self.vtm is None:
            raise ValueError("this model has no VTM head (heads.vtm is false in its config)")
        text, video = self.vtm_pooler_inputs(video_cls, text_tokens)
        for x, pooler in ((text, self.text_pooler), (video, self.video_pooler)):
            n, total, squares = _moments(x) if reduce is None else reduce(_moments(x))
            mean = total / n
            std = (squares / n - mean**2).clamp(min=0.0).sqrt().clamp(min=1e-4)
            weight = pooler.dense.weight.double() / std
            pooler.dense.bias.sub_((weight @ mean).to(pooler.dense.bias.dtype))
            pooler.dense.weight.copy_(weight)

    def mlm_logits(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """MLM logits ``(B, L, V)`` from the fused text tokens."""
        if self.mlm is None:
            raise ValueError("this model has no MLM head (heads.mlm is false in its config)")
        return self.mlm(self.text_transform(text_tokens))

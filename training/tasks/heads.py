"""Task heads that sit on EgoVLPv2 features (reference §3, downstream usage).

* :class:`QAHead` is the EgoTaskQA head: ``Linear(D, |A|) -> ReLU -> Dropout(0.2) -> Linear(|A|, |A|)`` over the
  fused video CLS, cross-entropy over the answer vocabulary.
* :class:`SpanHead` is a small grounding head in the spirit of VSLNet (the reference's EgoNLQ head, shrunk for
  CPU): per-window fused features ``(B, N, D)`` -> projection + sinusoidal positions; as in VSLNet the query's
  dual-mode token states attend into it (windows as queries, text tokens as keys), and the dual-mode similarity
  of each window to the query enters as one more input; then a Transformer encoder -> start and end logits.
  With ``sim_prior`` the head refines the similarity ranking instead of learning it: its output layer starts
  at zero and each of the start and end logits adds the standardised similarity times a learned weight, so an
  untrained head already ranks windows as the zero-shot dual model does.

Each head is rebuilt from the ``config()`` dict stored in fine-tuned checkpoints (:func:`build_head`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from egovlpv2_edge.model.layers import init_weights

__all__ = ["QAHead", "SpanHead", "build_head", "fit_qa_head", "head_accuracy"]


class QAHead(nn.Module):
    """Answer classifier ``Linear(D, A) -> ReLU -> Dropout -> Linear(A, A)``.

    Args:
        in_dim: Feature width D (the fused video CLS width; video + text widths for the dual baseline).
        num_answers: Size A of the answer vocabulary.
        dropout: Dropout between the layers (reference 0.2).
    """

    def __init__(self, in_dim: int, num_answers: int, dropout: float = 0.2) -> None:
        super().__init__()
        if num_answers < 2:
            raise ValueError(f"num_answers={num_answers}; a QA head needs at least 2 answers")
        self.in_dim, self.num_answers, self.dropout = in_dim, num_answers, dropout
        self.net = nn.Sequential(
            nn.Linear(in_dim, num_answers), nn.ReLU(), nn.Dropout(dropout), nn.Linear(num_answers, num_answers)
        )
        self.apply(init_weights)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved with the checkpoint."""
        return {"kind": "qa", "in_dim": self.in_dim, "num_answers": self.num_answers, "dropout": self.dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` to answer logits ``(B, A)``."""
        return self.net(x)


def fit_qa_head(head: QAHead, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 1e-3,
                batch: int = 64, seed: int = 0) -> float:  # fmt: skip
    """Fit ``head`` on fixed features ``x`` ``(N, D)`` and answers ``y`` ``(N,)`` in place (AdamW, decay 0.01).

    The features are standardised per dimension while fitting (a from-scratch encoder's features share a large
    common component that a plain head needs many epochs to see past); the standardisation is then folded into
    the first linear layer, so the fitted head reads raw features. Returns the last epoch's mean loss.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(head.parameters()).device
    x, y = x.to(device), y.to(device)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    was_training, last = head.training, float("nan")
    head.train()
    for _ in range(epochs):
        losses = []
        for idx in torch.randperm(len(z), generator=gen).to(device).split(batch):
            loss = nn.functional.cross_entropy(head(z[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        last = float(sum(losses) / max(len(losses), 1))
    first = head.net[0]
    with torch.no_grad():  # W((x - m) / s) + b = (W / s) x + (b - (W / s) m)
        first.weight.div_(std)
        first.bias.sub_(first.weight @ mean)
    head.train(was_training)
    return last


@torch.no_grad()
def head_accuracy(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of the answers ``y`` ``(N,)`` that ``head`` ranks first from features ``x`` ``(N, D)`` (eval mode; the
    head's mode is left as it was)."""
    was_training = head.training
    device = next(head.parameters()).device
    right = head.eval()(x.to(device)).argmax(-1).cpu() == y.cpu()
    head.train(was_training)
    return float(right.float().mean())


def sinusoid(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal position table ``(n, dim)``."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class SpanHead(nn.Module):
    """Start/end logits over a sequence of per-window features.

    Args:
        in_dim: Feature width D (0 = the head reads no per-window features: window positions, the similarity and
            the query only).
        hidden: Width inside the head.
        layers: Transformer encoder layers.
        heads: Attention heads.
        dropout: Dropout inside the encoder.
        text_dim: Width of the query's token states to attend to (0 = the head does not read the query).
        use_sim: Read each window's dual similarity to the query.
        sim_prior: Starting weight of the standardised similarity in the start and end logits (learned; needs
            ``use_sim``); the output layer then starts at zero. 0 = no prior.
    """

    def __init__(self, in_dim: int, hidden: int = 128, layers: int = 1, heads: int = 2, dropout: float = 0.1,
                 text_dim: int = 0, use_sim: bool = False, sim_prior: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if hidden % heads or hidden % 2:
            raise ValueError(f"hidden={hidden} must be even and divisible by heads={heads}")
        if sim_prior and not use_sim:
            raise ValueError(f"sim_prior={sim_prior} needs use_sim=True (the prior is the query-window similarity)")
        self.args = {"in_dim": in_dim, "hidden": hidden, "layers": layers, "heads": heads, "dropout": dropout,
                     "text_dim": text_dim, "use_sim": use_sim, "sim_prior": sim_prior}  # fmt: skip
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden)) if in_dim else None
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden)) if text_dim else None
        self.query_attn = nn.MultiheadAttention(hidden, heads, dropout, batch_first=True) if text_dim else None
        self.sim_proj = nn.Linear(1, hidden) if use_sim else None
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(hidden, 2)
        self.prior = None
        if sim_prior:  # start and end logits begin as sim_prior * z(similarity); the rest is learned on top
            self.prior = nn.Parameter(torch.full((2,), float(sim_prior)))
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved with the checkpoint."""
        return {"kind": "span", **self.args}

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        sim: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits ``(B, N)``.

        Args:
            x: Per-window features ``(B, N, D)`` (``D`` may be 0 for a head built with ``in_dim=0``).
            mask: Validity ``(B, N)`` (True = real window); padded windows get a large negative logit, so a
                softmax over N never picks them.
            text: The query's token states ``(B, L, Dt)`` (needed when the head was built with ``text_dim``).
            text_mask: Their validity ``(B, L)`` (True = real token).
            sim: Dual-mode query-window cosine similarity ``(B, N)`` (needed with ``use_sim``); standardised over
                each query's real windows, so only its shape along the video counts.
        """
        z = None
        B, N, _ = x.shape
        h = sinusoid(N, self.args["hidden"], x.device).expand(B, N, -1)  # (B, N, H)
        if self.proj is not None:
            h = h + self.proj(x)
        if self.query_attn is not None and self.text_proj is not None:
            if text is None or text_mask is None:
                raise ValueError("this span head reads the query: pass text (B, L, Dt) and text_mask (B, L)")
            q = self.text_proj(text)  # (B, L, H)
            h = h + self.query_attn(h, q, q, key_padding_mask=~text_mask, need_weights=False)[0]
        if self.sim_proj is not None:
            if sim is None:
                raise ValueError("this span head reads the query-window similarity: pass sim (B, N)")
            m = mask.to(sim.dtype)
            mean = (sim * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)
            var = (((sim - mean) * m) ** 2).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)
            z = (sim - mean) / (var.sqrt() + 1e-6) * m  # (B, N)
            h = h + self.sim_proj(z.unsqueeze(-1))
        h = self.encoder(h, src_key_padding_mask=~mask)
        logits = self.out(h)  # (B, N, 2)
        if self.prior is not None and z is not None:
            logits = logits + z.unsqueeze(-1) * self.prior
        logits = logits.masked_fill(~mask[..., None], -1e4)
        return logits[..., 0], logits[..., 1]


def build_head(config: dict[str, Any]) -> nn.Module:
    """Rebuild a head from its saved ``config()``.

    Raises:
        ValueError: On an unknown head kind.
    """
    args = {k: v for k, v in config.items() if k != "kind"}
    if config.get("kind") == "qa":
        return QAHead(**args)
    if config.get("kind") == "span":
        return SpanHead(**args)
    raise ValueError(f"unknown head kind {config.get('kind')!r}; valid: qa, span")

"""AdamW parameter groups and the cosine schedule of EgoVLPv2 pre-training (reference Sec. 2, optimisation).

Heads (projections, VTM, MLM) and cross-modal parameters (every cross-attention branch, its gate included)
train at ``head_lr_mult`` times the backbone rate. Biases, norms, gates and other 1-D parameters get no weight
decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

HEAD_PREFIXES = ("txt_proj.", "vid_proj.", "heads.")
CROSS_MARK = ".cross."


def param_groups(
    model: nn.Module,
    lr: float,
    head_lr_mult: float,
    weight_decay: float,
    video_lr_mult: float = 1.0,
    gate_lr_mult: float = 1.0,
    text_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Groups by role (video backbone, text backbone, heads and cross-modal) and decay; empty groups dropped.

    ``video_lr_mult`` scales the video backbone's rate (a backbone trained from scratch, rather than from
    ImageNet weights as in the paper, wants a larger one). ``gate_lr_mult`` scales the gates beyond the head rate:
    they start at 0, and the cross-attention they multiply gets no gradient until they move. ``text_lr_mult``
    scales the text backbone's rate (0 after :func:`lock_text_backbone`, whose frozen parameters are skipped).
    """
    mult = {"video": video_lr_mult, "text": text_lr_mult, "head": head_lr_mult, "gate": head_lr_mult * gate_lr_mult}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = "head" if name.startswith(HEAD_PREFIXES) or CROSS_MARK in name else "video"
        if role == "video" and not name.startswith("video."):
            role = "text" if name.startswith("text.") else "head"
        if name.endswith(".cross.gate"):
            role = "gate"
        decay = p.ndim >= 2 and "embed" not in name.split(".")[-1] and "token" not in name
        groups.setdefault((role, decay), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * mult[role],
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{role}_{'decay' if decay else 'no_decay'}",
        }
        for (role, decay), params in sorted(groups.items())
    ]


def is_text_backbone(name: str) -> bool:
    """A text-encoder parameter outside every cross-attention branch (what dual mode's text side runs)."""
    return name.startswith("text.") and CROSS_MARK not in name


def lock_text_backbone(model: nn.Module) -> int:
    """Freeze the text backbone (the pretrained text encoder stays as loaded); returns the parameters frozen.

    Locked-text contrastive training: the video encoder, learned from scratch, aligns to a fixed text space,
    and no text gradients are computed. Cross-attention branches, gates and heads keep training.
    """
    frozen = 0
    for name, p in model.named_parameters():
        if is_text_backbone(name) and p.requires_grad:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def reference_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """:func:`param_groups` with a run's optimiser settings (``cfg``: an ``OptimConfig``); ``text_lr_mult=0`` first
    locks the text backbone (:func:`lock_text_backbone`), so call it before any DistributedDataParallel wrap."""
    if cfg.text_lr_mult == 0:
        lock_text_backbone(model)
    return param_groups(
        model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay, cfg.video_lr_mult, cfg.gate_lr_mult, cfg.text_lr_mult
    )


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW over :func:`reference_groups` with the run's betas and eps."""
    return torch.optim.AdamW(reference_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def cosine_schedule(opt: torch.optim.Optimizer, total_steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` of the steps, then cosine decay to 0."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)

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
FUSED_PREFIXES = ("heads.", "fusion_")  # trained by fused passes only (with every cross-attention branch)


def is_fused_only(name: str) -> bool:
    """A parameter only fused passes train: a cross-attention branch (gate included), a fusion head (VTM, MLM) or
    the fusion stream's norm and CLS token."""
    return CROSS_MARK in name or name.startswith(FUSED_PREFIXES)


def param_groups(
    model: nn.Module,
    lr: float,
    head_lr_mult: float,
    weight_decay: float,
    video_lr_mult: float = 1.0,
    gate_lr_mult: float = 1.0,
    text_lr_mult: float = 1.0,
    fused_role: bool = False,
) -> list[dict[str, Any]]:
    """Groups by role (video backbone, text backbone, heads and cross-modal) and decay; empty groups dropped.

    ``video_lr_mult`` scales the video backbone's rate (a backbone trained from scratch, rather than from
    ImageNet weights as in the paper, wants a larger one). ``gate_lr_mult`` scales the gates beyond the head rate:
    they start at 0, and the cross-attention they multiply gets no gradient until they move. ``text_lr_mult``
    scales the text backbone's rate (0 after :func:`lock_text_backbone`, whose frozen parameters are skipped).
    ``fused_role`` puts what only fused passes train (cross-attention branches, VTM and MLM heads, the fusion
    stream's norm and CLS token) in groups of their own, ``xmodal_*``, at the head rate, so that
    :func:`cosine_schedule` can run their schedule over the fused phase alone; gates stay in ``gate_*``.
    """
    mult = {"video": video_lr_mult, "text": text_lr_mult, "head": head_lr_mult, "xmodal": head_lr_mult}
    mult["gate"] = head_lr_mult * gate_lr_mult
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = "head" if name.startswith(HEAD_PREFIXES) or CROSS_MARK in name else "video"
        if role == "video" and not name.startswith("video."):
            role = "text" if name.startswith("text.") else "head"
        if fused_role and is_fused_only(name):
            role = "xmodal"
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
        model,
        cfg.lr,
        cfg.head_lr_mult,
        cfg.weight_decay,
        cfg.video_lr_mult,
        cfg.gate_lr_mult,
        cfg.text_lr_mult,
        cfg.fused_schedule,
    )


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW over :func:`reference_groups` with the run's betas and eps."""
    return torch.optim.AdamW(reference_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def cosine_schedule(
    opt: torch.optim.Optimizer, total_steps: int, warmup: float, fused_from: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` of the steps, then cosine decay to 0.

    With ``fused_from`` > 0 the ``xmodal_*`` groups (:func:`param_groups` with ``fused_role``) run the same shape
    over steps ``fused_from..total_steps`` only: they get no gradient before the fused losses join, so their
    schedule starts when those do instead of at a rate already decayed by the dual phase.
    """

    def shape(start: int) -> Any:
        span = max(1, total_steps - start)
        warm = max(1, int(span * warmup))

        def factor(step: int) -> float:
            step -= start
            if step < 0:
                return 0.0
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, span - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return factor

    main, fused = shape(0), shape(fused_from)
    lambdas = [fused if fused_from > 0 and g.get("name", "").startswith("xmodal") else main for g in opt.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(opt, lambdas)

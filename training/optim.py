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


def param_groups(model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
    """Four groups: (backbone | head/cross-modal) x (decay | no decay); empty groups are dropped."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        fast = name.startswith(HEAD_PREFIXES) or CROSS_MARK in name
        decay = p.ndim >= 2 and "embed" not in name.split(".")[-1] and "token" not in name
        groups.setdefault((fast, decay), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * (head_lr_mult if fast else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{'head' if fast else 'backbone'}_{'decay' if decay else 'no_decay'}",
        }
        for (fast, decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the run's betas and eps."""
    groups = param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def cosine_schedule(opt: torch.optim.Optimizer, total_steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` of the steps, then cosine decay to 0."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)

"""Parameter and multiply-accumulate counts per part of the model, per clip (reference Sec. 6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from egovlpv2_edge.model.egovlpv2 import EgoVLPv2


@dataclass(frozen=True)
class ModelStats:
    """Counts for one model.

    Attributes:
        params: Parameters per part (``video``, ``text``, ``cross_attention``, ``heads``, ``total``).
        gmacs: Giga multiply-accumulates per clip (batch 1, text of ``max_length`` tokens) per stage:
            ``video_lower``, ``video_upper``, ``text``, ``fused_upper`` (top layers of both, fused) and
            ``dual_clip`` (a whole dual-mode video encoding).
    """

    params: dict[str, int]
    gmacs: dict[str, float]


def count_params(model: EgoVLPv2) -> dict[str, int]:
    """Parameters per part of the model."""

    def n(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    cross = sum(n(m) for m in model.cross_attention_modules())
    total = n(model)
    video, text = n(model.video), n(model.text)
    return {"video": video, "text": text, "cross_attention": cross, "heads": total - video - text, "total": total}


def _gmacs(fn) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 2e9


def count_macs(model: EgoVLPv2) -> dict[str, float]:
    """GMACs per clip for each stage the runtime runs (matmuls and convolutions; softmax/LN not counted)."""
    v, t = model.cfg.video, model.cfg.text
    frames = torch.zeros(1, v.num_frames, 3, v.img_size, v.img_size)
    ids = torch.full((1, t.max_length), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        vt, tt, vm = model.video_lower(frames), model.text_lower(ids, mask), model.video_motion(frames)
    return {
        "video_lower": _gmacs(lambda: (model.video_lower(frames), model.video_motion(frames))),  # as its graph
        "video_upper": _gmacs(lambda: model.video_upper(vt, motion=vm)),
        "text": _gmacs(lambda: model.encode_text(ids, mask)),
        "fused_upper": _gmacs(lambda: model.fusion_heads(*model.fuse_upper(vt, tt, mask))),
        "dual_clip": _gmacs(lambda: model.encode_video(frames)),
    }


def model_stats(model: EgoVLPv2) -> ModelStats:
    """Parameters and GMACs of ``model``."""
    return ModelStats(params=count_params(model), gmacs=count_macs(model))

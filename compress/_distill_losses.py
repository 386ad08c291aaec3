"""Distillation losses, layer maps, fused-layer states and initialisation from the teacher (issue #5).

Private helpers of :mod:`egovlpv2_edge.compress.distill`, which re-exports the public names; see its docstring for
how the terms combine. Each loss takes plain tensors, so it tests on a small hand-computed case.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from egovlpv2_edge.config import ModelConfig
from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.model.egovlpv2 import FusionOutput
from egovlpv2_edge.model.layers import additive_mask

log = logging.getLogger(__name__)


class DistillError(ValueError):
    """Teacher and student (or their checkpoints, tokenizers, configs) do not fit together for distillation."""


# ----- losses ----------------------------------------------------------------------------------------------------


def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` per row of ``(..., C)`` logits, shape ``(...)``."""
    log_p_t = F.log_softmax(teacher_logits.float(), dim=-1)
    log_p_s = F.log_softmax(student_logits.float(), dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def affinity_kl(student_sim: torch.Tensor, teacher_sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """Similarity-matrix distillation in both directions.

    ``KL_t2v = mean_i KL(softmax_j(T_ij / t) || softmax_j(S_ij / t))`` over text rows and ``KL_v2t`` the same over
    video rows (the transposes); the loss is their sum. It is 0 exactly when the rows' softmaxes agree.

    Args:
        student_sim: Student cosine similarities ``(N, N)``, text rows and video columns.
        teacher_sim: Teacher cosine similarities ``(N, N)`` (no gradient needed).
        temperature: Softmax temperature applied to both matrices.

    Returns:
        The scalar loss.
    """
    if student_sim.shape != teacher_sim.shape:
        raise ValueError(f"similarity shapes differ: student {tuple(student_sim.shape)} vs {tuple(teacher_sim.shape)}")
    s, t = student_sim / temperature, teacher_sim.detach() / temperature
    return _kl_rows(s, t).mean() + _kl_rows(s.T, t.T).mean()


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Embedding distillation: ``mean_i (1 - cos(s_i, t_i))`` over paired rows ``(N, D)`` of one embedding space.

    The affinity KL only fixes how a batch's similarities rank; this pins each student embedding to the
    teacher's own, a target per clip rather than per batch, which a video encoder trained from scratch learns
    from far faster. Both must live in one space (same width; e.g. a student whose text tower is the teacher's).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"embedding shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


def logit_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """Soft-target distillation of class logits ``(..., C)``: ``t^2 * KL(softmax(T/t) || softmax(S/t))`` per row.

    The ``t^2`` factor keeps gradient sizes comparable across temperatures (Hinton et al., 2015).

    Args:
        student_logits: Student logits.
        teacher_logits: Teacher logits of the same shape.
        temperature: Softening temperature.
        reduction: ``"mean"`` or ``"sum"`` over rows (the caller divides a sum by a global count).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; valid: mean, sum")
    per_row = _kl_rows(student_logits / temperature, teacher_logits.detach() / temperature) * temperature**2
    return per_row.mean() if reduction == "mean" else per_row.sum()


def hidden_mse(
    student: torch.Tensor, teacher: torch.Tensor, projection: nn.Module, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Summed squared error between projected student states and teacher states, and the element count.

    Args:
        student: Student states ``(B, T, Ds)`` or ``(B, Ds)``.
        teacher: Teacher states ``(B, T, Dt)`` or ``(B, Dt)``.
        projection: ``Ds -> Dt`` (a Linear, or Identity when the widths agree).
        mask: Optional ``(B, T)`` 1/0 mask of the tokens that count (text padding is left out).

    Returns:
        ``(sum of squared errors, number of compared elements)``; their ratio is the MSE.
    """
    diff = (projection(student).float() - teacher.detach().float()) ** 2  # (B, T, Dt)
    if mask is None:
        return diff.sum(), diff.numel()
    m = mask.to(diff.dtype).unsqueeze(-1)  # (B, T, 1)
    return (diff * m).sum(), int(mask.sum()) * diff.shape[-1]


def proportional_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher index for each of ``n_student`` layers: ``ceil((i + 1) * n_teacher / n_student) - 1``.

    The last student layer maps to the last teacher layer and equal depths map one to one; e.g. 2 student fusion
    layers over 3 teacher fusion layers give ``[1, 2]``.
    """
    if n_student < 1 or n_teacher < 1:
        raise DistillError(
            f"layer map needs at least one layer on each side (student {n_student}, teacher {n_teacher})"
        )
    return [-(-(i + 1) * n_teacher // n_student) - 1 for i in range(n_student)]


# ----- fused layers, projections and task heads ------------------------------------------------------------------


def fused_layer_outputs(
    model: EgoVLPv2, video_tokens: torch.Tensor, text_tokens: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:meth:`EgoVLPv2.fuse_upper` that also returns every fused layer's output (the last pair equals its result).

    Returns:
        Video tokens ``(B, T, Dv)`` and text tokens ``(B, L, Dt)`` after each of the M fused layers, bottom to top.
    """
    mask = additive_mask(attention_mask, text_tokens.dtype)
    F_ = model.cfg.video.num_frames
    blocks = model.video.blocks[model.video.first_fused :]
    layers = model.text.layers[model.text.first_fused :]
    v, t = video_tokens, text_tokens
    videos, texts = [], []
    for block, layer in zip(blocks, layers, strict=True):
        v, t = block(v, F_, t, mask), layer(t, mask, v)  # each side reads the other's layer input
        videos.append(v)
        texts.append(t)
    return videos, texts


def run_fused(
    model: EgoVLPv2, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[FusionOutput, list[torch.Tensor], list[torch.Tensor]]:
    """:meth:`EgoVLPv2.forward_fusion` (no MLM logits) plus the per-layer fused states of both encoders."""
    v = model.video_lower(frames, "fusion")
    t = model.text_lower(input_ids, attention_mask)
    videos, texts = fused_layer_outputs(model, v, t, attention_mask)
    return model.fusion_heads(videos[-1], texts[-1]), videos, texts


def _projection(d_in: int, d_out: int) -> nn.Module:
    if d_in == d_out:
        return nn.Identity()
    lin = nn.Linear(d_in, d_out, bias=False)
    nn.init.normal_(lin.weight, std=d_in**-0.5)  # keeps the states' scale, so the first MSE values are meaningful
    return lin


class HiddenProjections(nn.Module):
    """Learned ``student width -> teacher width`` maps for each student fusion layer (video and text).

    Args:
        student: The student config.
        teacher: The teacher config.

    Attributes:
        layer_map: Teacher fusion-layer index for each student fusion layer (:func:`proportional_map`).
    """

    def __init__(self, student: ModelConfig, teacher: ModelConfig) -> None:
        super().__init__()
        self.layer_map = proportional_map(student.fusion.num_layers, teacher.fusion.num_layers)
        M = student.fusion.num_layers
        self.video = nn.ModuleList(_projection(student.video.width, teacher.video.width) for _ in range(M))
        self.text = nn.ModuleList(_projection(student.text.width, teacher.text.width) for _ in range(M))


# ----- initialisation from the teacher ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from_teacher` did.

    Attributes:
        copied: ``(student key, teacher key)`` for every tensor copied.
        skipped: ``(student key, reason)`` for every student tensor left as it was.
        video_map: Teacher block index for each student video block.
        text_map: Teacher layer index for each student text layer.
    """

    copied: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    video_map: list[int]
    text_map: list[int]

    def summary(self) -> str:
        """One line: counts, parameters copied and the layer maps."""
        return (
            f"copied {len(self.copied)} tensors from the teacher, kept {len(self.skipped)}; "
            f"video block map {self.video_map}, text layer map {self.text_map}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON- and ``weights_only``-safe dict."""
        return {
            "copied": [list(p) for p in self.copied],
            "skipped": [list(p) for p in self.skipped],
            "video_map": self.video_map,
            "text_map": self.text_map,
        }


_LAYER_KEY = re.compile(r"^(video\.blocks|text\.layers)\.(\d+)\.(.*)$")


def _teacher_key(key: str, video_map: list[int], text_map: list[int]) -> str:
    m = _LAYER_KEY.match(key)
    if m is None:
        return key
    where, i, rest = m.group(1), int(m.group(2)), m.group(3)
    return f"{where}.{(video_map if where == 'video.blocks' else text_map)[i]}.{rest}"


def init_from_teacher(student: EgoVLPv2, teacher: EgoVLPv2) -> InitReport:
    """Copy every teacher tensor whose shape fits into the student, through depth-proportional layer maps.

    Student block/layer ``i`` takes teacher block/layer :func:`proportional_map` ``[i]`` (one to one at equal
    depth, so a MiniLM text encoder is copied whole); other tensors pair by name. A cross-attention branch is
    copied all or nothing: half a branch (e.g. queries fitting, video-width keys not) would not compute anything
    the teacher did.

    Returns:
        The :class:`InitReport`.
    """
    video_map = proportional_map(student.cfg.video.depth, teacher.cfg.video.depth)
    text_map = proportional_map(student.cfg.text.depth, teacher.cfg.text.depth)
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    plan: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    for key, tensor in s_sd.items():
        src = _teacher_key(key, video_map, text_map)
        if src not in t_sd:
            skipped.append((key, f"teacher has no {src}"))
        elif t_sd[src].shape != tensor.shape:
            skipped.append((key, f"shape {tuple(tensor.shape)} vs teacher {src} {tuple(t_sd[src].shape)}"))
        else:
            plan[key] = src
    for branch in {k.split(".cross.")[0] for k in s_sd if ".cross." in k}:
        keys = [k for k in s_sd if k.startswith(branch + ".cross.")]
        if not all(k in plan for k in keys):
            for k in keys:
                if k in plan:
                    skipped.append((k, "rest of its cross-attention branch does not fit"))
                    del plan[k]
    with torch.no_grad():
        for key, src in plan.items():
            s_sd[key].copy_(t_sd[src])
    report = InitReport(sorted(plan.items()), sorted(skipped), video_map, text_map)
    log.info("init from teacher: %s", report.summary())
    return report

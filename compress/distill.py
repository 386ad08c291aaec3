"""Distillation of a pre-trained EgoVLPv2 teacher into the edge student, gated fusion layers kept (issue #5).

The student keeps the paper's fusion inside the backbone (arXiv 2307.05463, Sec. 3.2): its top layers stay
gated cross-attention layers, and distillation teaches them what the teacher's fused layers compute. Each step
runs the teacher (frozen, eval mode) and the student on the same clips and texts and adds, to the ground-truth
pre-training losses (EgoNCE + MLM + VTM, Sec. 3.3, weighted by ``loss.gt_weight``):

* **affinity** (:func:`affinity_kl`): KL between the teacher's and the student's softmax over the batch
  video-text similarity matrix, text-to-video rows and video-to-text rows;
* **embeddings** (:func:`embedding_cosine`): each student dual embedding against the teacher's own (``1 - cos``),
  video and (when the student's text tower trains) text, where the embedding widths match;
* **VTM logits** (:func:`logit_kl`): the fused pairs (half matching, half hard negatives drawn from the
  *teacher's* similarities) scored by both; KL of the softened 2-way logits;
* **MLM logits**: KL of the masked-token distributions on the same masked text (only when teacher and student
  share the tokenizer and vocabulary; skipped with a logged reason otherwise);
* **hidden states** (:func:`hidden_mse`): student fused-layer outputs (video tokens and text tokens) against the
  teacher's fused layer at the proportional index (:func:`proportional_map`), after a learned linear projection
  where widths differ;
* **task heads**: any head (e.g. a QA answer head over the fused video CLS) the teacher's checkpoint carries,
  found through :class:`HeadHook` objects; the student's comes from its init checkpoint or is created fresh at
  its width. KL of the softened logits on the fused pairs and, for the QA head, on questions of the QA split
  (``data/qa.json``, ``qa_batch_size`` per step) with their clips; the student checkpoint stores the head as
  fine-tuned checkpoints do (``training.tasks.checkpoint.load_finetuned`` and the ONNX exporter read it).

The student can start from the teacher's tensors where shapes fit (:func:`init_from_teacher`; e.g. the MiniLM
text layers of ``egovlpv2_small`` into ``egovlpv2_edge``). The loop reuses the pre-training pieces (data,
sampler, AdamW groups, cosine schedule, torchrun helpers) and writes ``metrics.jsonl``, ``curves.png``,
``config.json``, ``last.pt`` (exact resume) and ``student.pt``, a checkpoint ``create_model(preset,
pretrained=...)`` loads, carrying the teacher checkpoint's head vocabularies (``answer_vocabs`` etc.).

The losses, layer maps and the init live in ``_distill_losses.py`` and the loop in ``_distill_run.py``; this module
re-exports the public names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egovlpv2_edge import create_model
from egovlpv2_edge.checkpoint import load_checkpoint, load_minilm, save_checkpoint
from egovlpv2_edge.compress._distill_heads import (
    FinetunedQAHook,
    HeadHook,
    QABatches,
    default_head_hooks,
    fit_student_dual_qa_head,
    fresh_qa_head,
    head_pairs,
    qa_batches,
    question_head_kl,
)
from egovlpv2_edge.compress._distill_losses import (
    DistillError,
    HiddenProjections,
    InitReport,
    affinity_kl,
    embedding_cosine,
    fused_layer_outputs,
    hidden_mse,
    init_from_teacher,
    logit_kl,
    proportional_map,
    run_fused,
)
from egovlpv2_edge.compress._distill_run import Run, loop, plot, resume
from egovlpv2_edge.config import ModelConfig
from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.runconfig import save_resolved
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.data.dataset import EgoClipDataset
from egovlpv2_edge.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    gather_no_grad,
    gather_with_local_grad,
    init_distributed,
)
from egovlpv2_edge.training.losses import egonce_loss, mlm_loss_sum, mlm_mask, positive_mask, vtm_plan
from egovlpv2_edge.training.optim import cosine_schedule, param_groups, reference_groups
from egovlpv2_edge.training.pretrain import LossConfig, canonical_order, local_positions
from egovlpv2_edge.training.text import is_minilm, load_or_train_tokenizer
from egovlpv2_edge.training.trainer import GlobalBatchSampler, LoopConfig, OptimConfig, reset_metrics

__all__ = [
    "DistillConfig",
    "DistillError",
    "DistillLossConfig",
    "DistillTask",
    "FinetunedQAHook",
    "HeadHook",
    "HiddenProjections",
    "InitReport",
    "QABatches",
    "affinity_kl",
    "build_optimizer_for",
    "build_student",
    "carried_entries",
    "default_head_hooks",
    "distill",
    "embedding_cosine",
    "fused_layer_outputs",
    "head_pairs",
    "hidden_mse",
    "init_from_teacher",
    "load_teacher",
    "logit_kl",
    "proportional_map",
    "run_fused",
    "same_text_tower",
    "save_student",
]

log = logging.getLogger(__name__)

# checkpoint entries that describe a training run, never carried from the teacher into the student
RUN_KEYS = frozenset(
    {"format", "config", "model", "optimizer", "scheduler", "scaler", "step", "rng", "run_config", "tokenizer"}
    | {"tokenizer_json"}
    | {"distill_aux", "distilled_from", "init_from_teacher"}
)


# ----- the task ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillLossConfig:
    """Weights and temperatures of the distillation terms and of the ground-truth losses."""

    gt_weight: float = 1.0  # weight of the ground-truth EgoNCE + MLM + VTM sum (0 = pure distillation)
    gt: LossConfig = field(default_factory=LossConfig)  # the ground-truth losses (as in pre-training)
    affinity_weight: float = 1.0  # similarity-matrix KL, both directions
    affinity_temperature: float = 0.05  # softmax temperature over cosine similarities
    embed_weight: float = 1.0  # 1 - cosine of student and teacher dual embeddings (same width only), per clip/text
    vtm_weight: float = 1.0  # VTM-logit KL on the fused pairs
    mlm_weight: float = 1.0  # masked-token logit KL (needs a shared vocabulary)
    head_weight: float = 1.0  # task-head logit KL, summed over the heads both checkpoints carry
    logit_temperature: float = 2.0  # softening of VTM, MLM and task-head logits (t^2-scaled KL)
    hidden_weight: float = 1.0  # fused-layer hidden-state MSE (video and text, after projection)
    # share of the steps that run the dual terms alone (EgoNCE, affinity, embeddings: no fused pass, about 3x
    # faster); the fused terms (MLM, VTM, hidden states, task heads) join after it. 0 runs every term throughout.
    fused_start: float = 0.0

    def fused_weights(self) -> dict[str, float]:
        """Effective weight of every term that reads a fused pass: ``masked`` (masked text) or ``pairs`` (VTM
        pairs) in the name says which pass; a term at 0 is not computed."""
        return {
            "masked_gt": self.gt_weight * self.gt.mlm_weight,
            "masked_kd": self.mlm_weight,
            "pairs_gt": self.gt_weight * self.gt.vtm_weight,
            "pairs_kd_vtm": self.vtm_weight,
            "pairs_kd_hidden": self.hidden_weight,
            "pairs_kd_heads": self.head_weight,
        }


class DistillTask(nn.Module):
    """Student + projections + student task heads, with the frozen teacher beside them (not a submodule).

    Wrap this module in DistributedDataParallel; only the student side trains and is saved.

    Args:
        student: The student model.
        teacher: The teacher model (frozen and put in eval mode here).
        special_ids: Token ids MLM never masks (student tokenizer).
        mask_id: The student tokenizer's mask id.
        loss: Weights and temperatures.
        seed: Base seed of the per-step random choices (MLM masks, VTM pairs).
        shared_vocab: Teacher and student read the same token ids (MLM distillation and token-level text
            hidden states need it; otherwise text states are compared mean-pooled).
        teacher_heads: Frozen teacher task heads by name.
        student_heads: Trainable student task heads with the same names.
        hooks: The head hooks that compute each head's logits.
        freeze_text: Keep the student's text tower (embeddings, self-attention and feed-forward layers, text
            projection) as initialised; its cross-attention and gates still train. When that tower computes what
            the teacher's does (same config, same tensors, shared vocabulary), the teacher's dual text embeddings
            stand in for the student's: the text side is then computed once per step, without a backward pass.
    """

    def __init__(
        self,
        student: EgoVLPv2,
        teacher: EgoVLPv2,
        special_ids: set[int],
        mask_id: int,
        loss: DistillLossConfig,
        seed: int = 0,
        shared_vocab: bool = True,
        teacher_heads: Mapping[str, nn.Module] | None = None,
        student_heads: Mapping[str, nn.Module] | None = None,
        hooks: Mapping[str, HeadHook] | None = None,
        freeze_text: bool = False,
    ) -> None:
        super().__init__()
        _check_pair(student.cfg, teacher.cfg)
        self.student = student
        self.text_frozen = freeze_text
        if freeze_text:
            for name, p in student.named_parameters():
                if _in_text_tower(name):
                    p.requires_grad_(False)
        self.text_from_teacher = freeze_text and shared_vocab and same_text_tower(student, teacher)
        if freeze_text:
            log.info(
                "student text tower frozen; dual text embeddings %s",
                "taken from the teacher (identical tower)" if self.text_from_teacher else "computed without gradient",
            )
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)  # outside the module tree: never trained
        self.proj = HiddenProjections(student.cfg, teacher.cfg)
        self.heads = nn.ModuleDict(dict(student_heads or {}))
        self.__dict__["teacher_heads"] = dict(teacher_heads or {})
        self.hooks = dict(hooks or {})
        self.special_ids, self.mask_id = frozenset(special_ids), mask_id
        self.loss_cfg, self.seed, self.shared_vocab = loss, seed, shared_vocab
        self.fused_from = 0  # first step with the fused terms (distill() sets it from loss.fused_start)
        self.mlm_distill = shared_vocab and student.cfg.text.vocab_size == teacher.cfg.text.vocab_size
        if loss.mlm_weight > 0 and not self.mlm_distill:
            log.warning(
                "MLM-logit distillation skipped: teacher and student do not share a vocabulary (%s)",
                "different tokenizers"
                if not shared_vocab
                else f"vocab {teacher.cfg.text.vocab_size} vs {student.cfg.text.vocab_size}",
            )

    def to(self, *args: Any, **kwargs: Any) -> DistillTask:
        """Move the student side and the teacher (which is not a submodule)."""
        super().to(*args, **kwargs)
        self.teacher.to(*args, **kwargs)
        for head in self.teacher_heads.values():
            head.to(*args, **kwargs)
        return self

    def forward(
        self,
        video: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        teacher_ids: torch.Tensor,
        teacher_mask: torch.Tensor,
        verb: torch.Tensor,
        noun: torch.Tensor,
        step: torch.Tensor,
        parts: int = 1,
        qa: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's loss over the local batch (``b`` clips; the global batch is gathered where a term needs it).

        Args:
            video: Clips ``(b, F, 3, H, W)`` at the student's size (resized for the teacher when it differs).
            input_ids: Student token ids ``(b, L)``.
            attention_mask: Student padding mask ``(b, L)``.
            teacher_ids: Teacher token ids ``(b, L')`` (the same tensor when the vocabulary is shared).
            teacher_mask: Teacher padding mask ``(b, L')``.
            verb: Multi-hot verbs ``(b, Cv)``.
            noun: Multi-hot nouns ``(b, Cn)``.
            step: The global step (0-d tensor) seeding the random choices.
            parts: 2 when the batch is positives followed by scene negatives, else 1.
            qa: QA questions with their clips for the QA head's KL (``video``, ``ids``, ``mask``, ``t_ids``,
                ``t_mask``; see ``_distill_heads.question_tokens``), or None.

        Returns:
            The loss to back-propagate (times the process count, which DDP's averaging undoes) and the global
            value of every part for logging.
        """
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        rank = torch.distributed.get_rank() if world > 1 else 0
        dev = video.device
        order = canonical_order(world, video.shape[0] // parts, parts).to(dev)
        mine = local_positions(world, rank, video.shape[0] // parts, parts).to(dev)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        g = _Gathered(video, input_ids, attention_mask, teacher_ids, teacher_mask, order)
        t_video = _resize(video, self.teacher.cfg.video.img_size)

        nce, aff, emb, sim_t, pos = self._dual(
            g, video, t_video, input_ids, attention_mask, teacher_ids, teacher_mask, verb, noun, order
        )
        fused_on = int(step) >= self.fused_from
        mlm, kd_mlm = self._mlm(g, video, t_video, attention_mask, teacher_mask, mine, gen, fused_on)
        vtm, kd_vtm, kd_hidden, kd_heads = self._vtm(g, sim_t, pos, mine, gen, fused_on)
        kd_qa = video.new_zeros(())
        if qa is not None and fused_on:
            kd_qa = question_head_kl(self, qa, self.loss_cfg.logit_temperature)
        kd_heads = kd_heads + kd_qa  # the heads' KL on the fused pairs and on QA questions

        c = self.loss_cfg
        gt = nce + c.gt.mlm_weight * mlm + c.gt.vtm_weight * vtm
        kd = (
            c.affinity_weight * aff
            + c.embed_weight * emb
            + c.vtm_weight * kd_vtm
            + c.mlm_weight * kd_mlm
            + c.hidden_weight * kd_hidden
            + c.head_weight * kd_heads
        )
        logs = {"egonce": nce.detach(), "kd_affinity": aff.detach(), "kd_embed": emb.detach()}
        logs |= {
            k: all_reduce_sum(v)
            for k, v in (
                ("mlm", mlm),
                ("vtm", vtm),
                ("kd_mlm", kd_mlm),
                ("kd_vtm", kd_vtm),
                ("kd_hidden", kd_hidden),
                ("kd_heads", kd_heads),
                ("kd_heads_qa", kd_qa),
            )
        }
        logs["distill"] = (
            c.affinity_weight * logs["kd_affinity"]
            + c.embed_weight * logs["kd_embed"]
            + c.vtm_weight * logs["kd_vtm"]
            + c.mlm_weight * logs["kd_mlm"]
            + c.hidden_weight * logs["kd_hidden"]
            + c.head_weight * logs["kd_heads"]
        )
        gt_log = logs["egonce"] + c.gt.mlm_weight * logs["mlm"] + c.gt.vtm_weight * logs["vtm"]
        logs["loss"] = c.gt_weight * gt_log + logs["distill"]
        return (c.gt_weight * gt + kd) * world, logs

    def _dual(
        self,
        g: _Gathered,
        video: Tensor,
        t_video: Tensor,
        ids: Tensor,
        mask: Tensor,
        t_ids: Tensor,
        t_mask: Tensor,
        verb: Tensor,
        noun: Tensor,
        order: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Dual pass of both models: EgoNCE on the student, affinity KL, embedding distillation, the teacher's
        similarities for VTM."""
        s, t, c = self.student, self.teacher, self.loss_cfg
        v = gather_with_local_grad(s.encode_video(video, normalize=True))[order]
        with torch.no_grad():
            tv = gather_no_grad(t.encode_video(t_video, normalize=True))[order]
            tx = gather_no_grad(t.encode_text(t_ids, t_mask, normalize=True))[order]
        if self.text_from_teacher:
            x = tx
        elif self.text_frozen:
            with torch.no_grad():
                x = gather_no_grad(s.encode_text(ids, mask, normalize=True))[order]
        else:
            x = gather_with_local_grad(s.encode_text(ids, mask, normalize=True))[order]
        pos = positive_mask(gather_no_grad(verb)[order], gather_no_grad(noun)[order]) if c.gt.egonce else None
        sim_s, sim_t = x @ v.T, (tx @ tv.T).float()  # (N, N), text rows
        zero = sim_s.new_zeros(())
        nce = egonce_loss(sim_s, pos, s.temperature) if c.gt_weight > 0 else zero
        aff = affinity_kl(sim_s, sim_t, c.affinity_temperature) if c.affinity_weight > 0 else zero
        emb = zero
        if c.embed_weight > 0 and v.shape == tv.shape:  # one embedding space only when the widths match
            emb = embedding_cosine(v, tv)
            if x.requires_grad:
                emb = emb + embedding_cosine(x, tx)
        return nce, aff, emb, sim_t, pos

    def _mlm(
        self,
        g: _Gathered,
        video: Tensor,
        t_video: Tensor,
        mask: Tensor,
        t_mask: Tensor,
        mine: Tensor,
        gen: torch.Generator,
        fused_on: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Fused pass on masked text: ground-truth MLM and, with a shared vocabulary, MLM-logit KL."""
        s, c = self.student, self.loss_cfg
        zero = video.new_zeros(())
        w = c.fused_weights()
        need_gt, need_kd = fused_on and w["masked_gt"] > 0, fused_on and w["masked_kd"] > 0 and self.mlm_distill
        if not (need_gt or need_kd):
            return zero, zero
        masked, labels = mlm_mask(
            g.ids, g.mask, self.special_ids, self.mask_id, s.cfg.text.vocab_size, gen, c.gt.mlm_probability
        )
        masked, labels = masked[mine], labels[mine]
        out = s.forward_fusion(video, masked, mask)
        chosen = labels != -100  # decode only the masked positions: the vocabulary projection is the costly part
        logits = s.heads.mlm_logits(out.text_tokens[chosen])  # (n, V)
        total = all_reduce_sum(torch.tensor(float(chosen.sum()), device=video.device)).clamp(min=1.0)
        mlm = mlm_loss_sum(logits, labels[chosen])[0] / total if need_gt else zero
        kd = zero
        if need_kd:
            with torch.no_grad():
                t_out = self.teacher.forward_fusion(t_video, masked, t_mask)
                t_logits = self.teacher.heads.mlm_logits(t_out.text_tokens[chosen])
            kd = logit_kl(logits, t_logits, c.logit_temperature, "sum") / total
        return mlm, kd

    def _vtm(
        self,
        g: _Gathered,
        sim_t: Tensor,
        pos: Tensor | None,
        mine: Tensor,
        gen: torch.Generator,
        fused_on: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fused pass on pairs drawn from the teacher's similarities: VTM, VTM KL, hidden states, task heads."""
        s, t, c = self.student, self.teacher, self.loss_cfg
        if not fused_on or not any(w > 0 for k, w in c.fused_weights().items() if k.startswith("pairs")):
            zero = sim_t.new_zeros(())
            return zero, zero, zero, zero  # no term reads the fused pairs: skip both fused passes
        plan = vtm_plan(sim_t, pos, t.temperature, gen)
        ti, vi = plan.text_index[mine.cpu()].to(g.video.device), plan.video_index[mine.cpu()].to(g.video.device)
        N = sim_t.shape[0]
        out, s_videos, s_texts = run_fused(s, g.video[vi], g.ids[ti], g.mask[ti])
        with torch.no_grad():
            t_out, t_videos, t_texts = run_fused(
                t, _resize(g.video[vi], t.cfg.video.img_size), g.t_ids[ti], g.t_mask[ti]
            )
        vtm = F.cross_entropy(out.vtm_logits, plan.labels[mine.cpu()].to(g.video.device), reduction="sum") / N
        kd_vtm = logit_kl(out.vtm_logits, t_out.vtm_logits, c.logit_temperature, "sum") / N
        kd_hidden = self._hidden(s_videos, s_texts, t_videos, t_texts, g.mask[ti], g.t_mask[ti])
        kd_heads = out.vtm_logits.new_zeros(())
        for name, head in self.heads.items():
            with torch.no_grad():
                t_logits = self.hooks[name].logits(self.teacher_heads[name], t_out)
            s_logits = self.hooks[name].logits(head, out)
            kd_heads = kd_heads + logit_kl(s_logits, t_logits, c.logit_temperature, "sum") / N
        return vtm, kd_vtm, kd_hidden, kd_heads

    def _hidden(
        self,
        s_videos: list[Tensor],
        s_texts: list[Tensor],
        t_videos: list[Tensor],
        t_texts: list[Tensor],
        mask: Tensor,
        t_mask: Tensor,
    ) -> Tensor:
        """Mean squared error over every mapped fused layer, video and text, normalised by the global count."""
        zero = s_videos[-1].new_zeros(())
        if self.loss_cfg.hidden_weight <= 0:
            return zero
        total, count = zero, 0
        for i, j in enumerate(self.proj.layer_map):
            sv, tv = s_videos[i], t_videos[j]
            if sv.shape[1] != tv.shape[1]:  # different token grids: compare the CLS token only
                sv, tv = sv[:, 0], tv[:, 0]
            err, n = hidden_mse(sv, tv, self.proj.video[i])
            total, count = total + err, count + n
            if self.shared_vocab:
                err, n = hidden_mse(s_texts[i], t_texts[j], self.proj.text[i], mask)
            else:  # different tokenisations: compare the mean over real tokens
                err, n = hidden_mse(_mean_tokens(s_texts[i], mask), _mean_tokens(t_texts[j], t_mask), self.proj.text[i])
            total, count = total + err, count + n
        return total / all_reduce_sum(torch.tensor(float(count), device=zero.device)).clamp(min=1.0)


class _Gathered:
    """The global batch in canonical order, gathered once per step (no gradients)."""

    def __init__(self, video: Tensor, ids: Tensor, mask: Tensor, t_ids: Tensor, t_mask: Tensor, order: Tensor) -> None:
        self.video = gather_no_grad(video)[order]
        self.ids, self.mask = gather_no_grad(ids)[order], gather_no_grad(mask)[order]
        same = t_ids is ids
        self.t_ids = self.ids if same else gather_no_grad(t_ids)[order]
        self.t_mask = self.mask if same else gather_no_grad(t_mask)[order]


def same_text_tower(student: EgoVLPv2, teacher: EgoVLPv2) -> bool:
    """Whether the student's dual text path (gates off) computes exactly what the teacher's does: same text config,
    same pooling and projection widths, and equal tensors under the same names outside the cross-attention."""
    if student.cfg.text != teacher.cfg.text or student.cfg.heads.embed_dim != teacher.cfg.heads.embed_dim:
        return False
    t_sd = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        other = t_sd.get(name)
        if _in_text_tower(name) and (other is None or other.shape != tensor.shape or not torch.equal(other, tensor)):
            return False
    return True


def _in_text_tower(name: str) -> bool:
    """A parameter of the dual text path (embeddings, self-attention, feed-forward, projection), not cross-attention."""
    return name.startswith(("text.", "txt_proj.")) and ".cross." not in name


def _mean_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)


def _resize(video: torch.Tensor, size: int) -> torch.Tensor:
    B, F_, C, H, W = video.shape
    if H == size and W == size:
        return video
    x = F.interpolate(video.reshape(B * F_, C, H, W), size=(size, size), mode="bilinear", align_corners=False)
    return x.reshape(B, F_, C, size, size)  # (B, F, 3, size, size)


def _check_pair(student: ModelConfig, teacher: ModelConfig) -> None:
    problems = []
    if student.video.num_frames != teacher.video.num_frames:
        problems.append(f"video.num_frames {student.video.num_frames} vs teacher {teacher.video.num_frames}")
    if tuple(student.video.mean) != tuple(teacher.video.mean) or tuple(student.video.std) != tuple(teacher.video.std):
        problems.append("video mean/std differ (both read the same normalised frames)")
    for who, cfg in (("student", student), ("teacher", teacher)):
        if cfg.fusion.num_layers < 1:
            problems.append(f"{who} has no fusion layers (fusion.num_layers=0)")
        if not (cfg.heads.vtm and cfg.heads.mlm):
            problems.append(f"{who} lacks a VTM or MLM head (heads.vtm/heads.mlm)")
    if problems:
        raise DistillError("teacher and student do not fit: " + "; ".join(problems))


# ----- the run ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillConfig(LoopConfig):
    """Everything one distillation run needs; saved resolved beside the run."""

    teacher: str = ""  # teacher checkpoint in this project's format (e.g. runs/teacher/teacher.pt); required
    teacher_tokenizer: str = ""  # "" = the checkpoint's tokenizer entry, else tokenizer.json beside it, else MiniLM
    data: str = "data/synth"  # dataset root (egoclip.csv, videos/, meta.json)
    out: str = "runs/distill"  # run directory
    student_preset: str = "egovlpv2_edge"  # student model preset
    model: dict[str, Any] = field(default_factory=dict)  # overrides merged over the student preset
    student_init: str = ""  # start the student from this checkpoint (e.g. one with a task head) instead
    init_text: str = "auto"  # auto (MiniLM for the MiniLM layout) | minilm | none; before init_from_teacher
    init_from_teacher: bool = True  # copy every teacher tensor whose shape fits (layer maps in the report)
    freeze_text: bool = True  # keep the student's text tower as initialised (cross-attention and gates train)
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    qa_batch_size: int = -1  # QA-split questions per step for the QA head's KL: -1 = batch_size // 2, 0 = none
    # epochs fitting a fresh student QA head (one its init did not carry) alone on its fused features of the QA
    # train questions when the fused terms start (0 = none: the head learns by KL alone)
    qa_head_warmup: int = 30
    # epochs of the student's gates-off QA head, fitted after distillation on its [video; text] dual embeddings of
    # the QA train questions (training/tasks/qa.py::fit_dual_qa_head; exported as the package's heads/qa_dual.json);
    # 0 = none. Needs the data's qa.json and an answer vocabulary (the QA head's, else the teacher's)
    qa_dual_head_epochs: int = 30


def load_teacher(path: str | Path) -> tuple[EgoVLPv2, dict[str, Any]]:
    """Build the teacher from its self-describing checkpoint and load it; returns the model and the raw dict."""
    file = Path(path)
    if not file.is_file():
        raise DistillError(f"teacher checkpoint {str(file)!r} does not exist (pass --teacher runs/<run>/teacher.pt)")
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    if not (isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("egovlpv2_edge/")):
        raise DistillError(f"{file} is not an egovlpv2_edge checkpoint (the teacher's config is read from it)")
    teacher = EgoVLPv2(ModelConfig.from_dict(ckpt["config"]))
    load_checkpoint(teacher, file)
    return teacher.eval().requires_grad_(False), ckpt


def carried_entries(teacher_ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """Teacher checkpoint entries the student inherits: everything but run state, with tensors taken out.

    Head vocabularies (``answer_vocabs``, ``task["vocab"]``) come along; the teacher's head weights do not fit the
    student: inside an entry they become None (with the ``head_config`` that described them), an entry of only
    tensors (a state dict) is dropped. A distilled student head is saved by its hook over these.
    """
    out: dict[str, Any] = {}
    for key, value in teacher_ckpt.items():
        if key in RUN_KEYS:
            continue
        if isinstance(value, Mapping) and _has_tensor(value) and not all(_has_tensor(v) for v in value.values()):
            stripped = {k: None if _has_tensor(v) else v for k, v in value.items()}
            if "head_config" in stripped and any(v is None and _has_tensor(value[k]) for k, v in stripped.items()):
                stripped["head_config"] = None  # training.tasks layout: the config of weights no longer there
            log.info("teacher checkpoint entry %r carried without its tensors", key)
            out[key] = stripped
        elif _has_tensor(value):
            log.info("not carried into the student: teacher checkpoint entry %r is tensors", key)
        else:
            out[key] = value
    return out


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_has_tensor(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_tensor(v) for v in value)
    return False


def _teacher_tokenizer(cfg: DistillConfig, ckpt: Mapping[str, Any], teacher: ModelConfig, out: Path) -> Tokenizer:
    """``teacher_tokenizer``, else the one the checkpoint embeds or names, else beside it, else MiniLM's."""
    if cfg.teacher_tokenizer:
        return Tokenizer.from_file(cfg.teacher_tokenizer, max_length=teacher.text.max_length)
    if ckpt.get("tokenizer_json"):  # fine-tuned checkpoints embed theirs
        file = out / "teacher_tokenizer.json"
        file.write_text(ckpt["tokenizer_json"])
        return Tokenizer.from_file(file, max_length=teacher.text.max_length)
    beside = Path(cfg.teacher).parent
    saved = str(ckpt.get("tokenizer") or "")
    candidates = [saved, str(beside / Path(saved).name) if saved else "", str(beside / "tokenizer.json")]
    for c in candidates:
        if c and Path(c).is_file():
            return Tokenizer.from_file(c, max_length=teacher.text.max_length)
    if is_minilm(teacher.text):
        from egovlpv2_edge.checkpoint import minilm_path

        return Tokenizer.from_pretrained_dir(minilm_path(), max_length=teacher.text.max_length)
    raise DistillError(f"no teacher tokenizer found (tried {[c for c in candidates if c]}); pass teacher_tokenizer=")


def _tokenizers(
    cfg: DistillConfig, ckpt: Mapping[str, Any], teacher: ModelConfig, student: ModelConfig, out: Path, is_main: bool
) -> tuple[Tokenizer, Tokenizer, bool]:
    """The student's and the teacher's tokenizers and whether they are one (same ids for both models)."""
    t_tok = _teacher_tokenizer(cfg, ckpt, teacher, out)
    path = out / "tokenizer.json"
    if t_tok.vocab_size <= student.text.vocab_size and t_tok.pad_id == student.text.pad_id:
        if is_main and not path.is_file():
            t_tok.save(path)
        barrier()
        return Tokenizer.from_file(path, max_length=student.text.max_length), t_tok, True
    log.info(
        "the teacher's tokenizer (vocab %d, pad %d) does not fit the student; it gets its own",
        t_tok.vocab_size,
        t_tok.pad_id,
    )
    root = Path(cfg.data)
    return load_or_train_tokenizer(student.text, root / "egoclip.csv", path, is_main), t_tok, False


def build_student(cfg: DistillConfig, teacher: EgoVLPv2) -> tuple[EgoVLPv2, dict[str, Any] | None, InitReport | None]:
    """The student, initialised from ``student_init``, else MiniLM (``init_text``) and then the teacher's tensors.

    Returns:
        The student, the ``student_init`` checkpoint dict (for its task heads) or None, and the init report.
    """
    student = create_model(cfg.student_preset, **cfg.model)
    if cfg.init_text not in ("auto", "none", "minilm"):
        raise ValueError(f"init_text={cfg.init_text!r}; valid: auto, minilm, none")
    if cfg.student_init:
        load_checkpoint(student, cfg.student_init)
        return student, torch.load(cfg.student_init, map_location="cpu", weights_only=True), None
    if cfg.init_text == "minilm" or (cfg.init_text == "auto" and is_minilm(student.cfg.text)):
        load_minilm(student)
    report = init_from_teacher(student, teacher) if cfg.init_from_teacher else None
    return student, None, report


def build_optimizer_for(task: DistillTask, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the student's reference groups plus the projections and task heads at the head rate."""
    if cfg.text_lr_mult == 0 and not task.text_frozen:
        raise DistillError("optim.text_lr_mult=0 would leave the text tower training at rate 0: use freeze_text=true")
    groups = reference_groups(task.student, cfg)
    aux = param_groups(
        nn.ModuleDict({"proj": task.proj, "heads": task.heads}), cfg.lr, cfg.head_lr_mult, cfg.weight_decay
    )
    for g in aux:
        g["name"] = "distill_" + g["name"]
    return torch.optim.AdamW(groups + aux, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def save_student(task: DistillTask, path: str | Path, teacher_ckpt: Mapping[str, Any],
                 dual_head: Mapping[str, Any] | None = None, **extra: Any) -> Path:  # fmt: skip
    """Write the student checkpoint: loadable by ``create_model(preset, pretrained=path)``, with the teacher's
    carried entries (head vocabularies), each distilled task head as its hook saves it and the student's gates-off
    QA head (``task["dual_head"]``) when one was fitted."""
    entries = carried_entries(teacher_ckpt)
    for name, head in task.heads.items():
        entries |= task.hooks[name].save(head)
    if dual_head is not None:
        entries["task"] = {**(entries.get("task") or {"name": "qa", "mode": "fusion"}), "dual_head": dict(dual_head)}
    save_checkpoint(task.student, path, **(entries | extra))
    return Path(path)


def distill(cfg: DistillConfig, hooks: Mapping[str, HeadHook] | None = None) -> Path:
    """Run distillation; returns the student checkpoint (``<out>/student.pt``), or ``last.pt`` when paused.

    Args:
        cfg: The resolved run config.
        hooks: Task-head hooks by name; :func:`default_head_hooks` when None.
    """
    info = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, t_ckpt = load_teacher(cfg.teacher)
    student, s_ckpt, report = build_student(cfg, teacher)
    s_tok, t_tok, shared = _tokenizers(cfg, t_ckpt, teacher.cfg, student.cfg, out, info.is_main)
    hooks = default_head_hooks() if hooks is None else dict(hooks)
    t_heads, s_heads = head_pairs(hooks, t_ckpt, teacher, s_ckpt, student)
    student.set_grad_checkpointing(cfg.grad_checkpointing)
    task = DistillTask(
        student.train(),
        teacher,
        s_tok.special_ids,
        s_tok.mask_id,
        cfg.loss,
        cfg.seed,
        shared,
        t_heads,
        s_heads,
        hooks,
        freeze_text=cfg.freeze_text,
    ).to(info.device)
    data, sampler = _data(cfg, student.cfg, info)
    qa_batch = cfg.batch_size // 2 if cfg.qa_batch_size < 0 else cfg.qa_batch_size
    qa = qa_batches(cfg.data, task, qa_batch, info, cfg.seed, cfg.num_workers, (s_tok, t_tok))
    spe = len(data) // cfg.batch_size
    total = cfg.max_steps or spe * cfg.epochs
    task.fused_from = round(cfg.loss.fused_start * total)
    ddp: nn.Module = task
    if info.world_size > 1:
        ddp = nn.parallel.DistributedDataParallel(
            task,
            device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            # a fused term at 0 leaves its parameters unused
            find_unused_parameters=task.fused_from > 0 or not all(w > 0 for w in cfg.loss.fused_weights().values()),
        )
    opt = build_optimizer_for(task, cfg.optim)
    sched = cosine_schedule(opt, total, cfg.optim.warmup)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    run = Run(cfg, info, task, ddp, opt, sched, scaler, out, total, qa=qa,
              warm_qa=cfg.qa_head_warmup > 0 and fresh_qa_head(s_heads, s_ckpt))  # fmt: skip
    if cfg.resume and (out / "last.pt").is_file():
        resume(run, out / "last.pt")
    elif info.is_main:
        reset_metrics(out)
    if info.is_main:
        save_resolved(cfg, out)
        log.info(
            "distilling %s -> %s: %d clips, %d steps, global batch %d on %d process(es); heads %s",
            teacher.cfg.name,
            student.cfg.name,
            len(data),
            total,
            cfg.batch_size,
            info.world_size,
            sorted(s_heads) or "none",
        )
    loop(run, data, sampler, s_tok, t_tok, shared, spe)
    barrier()
    if run.step < total:
        log.info("paused at step %d of %d; run again with the same out= to resume", run.step, total)
        return out / "last.pt"
    final = out / "student.pt"
    if info.is_main:
        extra: dict[str, Any] = {
            "step": run.step,
            "tokenizer": str(out / "tokenizer.json"),
            "tokenizer_json": (out / "tokenizer.json").read_text(),  # self-contained, like fine-tuned checkpoints
            "distilled_from": str(cfg.teacher),
        }
        if report is not None:
            extra["init_from_teacher"] = report.to_dict()
        dual = fit_student_dual_qa_head(task, t_ckpt, s_tok, cfg.data, cfg.qa_dual_head_epochs, cfg.seed)
        save_student(task, final, t_ckpt, dual_head=dual, **extra)
        plot(run.history, out / "curves.png")
        log.info("wrote %s and %s", final, out / "curves.png")
    return final


def _data(cfg: DistillConfig, student: ModelConfig, info: DistInfo) -> tuple[EgoClipDataset, GlobalBatchSampler]:
    root = Path(cfg.data)
    data = EgoClipDataset(
        root / "egoclip.csv",
        root / "videos",
        student.video.num_frames,
        student.video.img_size,
        split="train",
        mode="train",
        scene_negatives=cfg.scene_negatives,
        seed=cfg.seed,
        skip_bad=cfg.skip_bad,
    )
    return data, GlobalBatchSampler(len(data), cfg.batch_size, info.rank, info.world_size, cfg.seed)

"""The pre-training task: EgoNCE + MLM + 2 * VTM over one model (arXiv 2307.05463, Sec. 3.3).

Each step runs three passes: dual (EgoNCE over the globally gathered batch), fused on masked text (MLM) and
fused on re-sampled pairs with hard negatives (VTM). Random choices (MLM masks, VTM pairs) are drawn from a
generator seeded by ``(seed, step)`` over the global batch in a canonical order, so one process and several
processes with the same global batch compute the same losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.training.distributed import all_reduce_sum, gather_no_grad, gather_with_local_grad
from egovlpv2_edge.training.losses import (
    egonce_loss,
    mlm_loss_sum,
    mlm_mask,
    positive_mask,
    time_reversal_loss,
    vtm_plan,
)


@dataclass(frozen=True)
class LossConfig:
    """Which objectives run and how they are weighted."""

    egonce: bool = True  # action-aware positives from verb/noun tags; False gives plain InfoNCE
    mlm_weight: float = 1.0  # weight of the masked-LM loss
    vtm_weight: float = 2.0  # weight of the video-text matching loss
    mlm_probability: float = 0.15  # share of real tokens chosen for MLM
    # share of the run that trains the dual encoders alone (EgoNCE only, no fused passes) before MLM and VTM join;
    # 0 (the paper) runs every loss from the first step. A loss with weight 0 is not computed at all.
    fusion_start: float = 0.0
    # weight of the time-reversal term: each clip whose verb has a reverse (pick up / put down, open / close) must
    # match its text better than the same clip played backwards; 0 (the paper) skips the extra video pass
    reverse_weight: float = 0.0
    # weight of the shuffled-frames term: every clip must match its text better than the same clip with its frames
    # in another order (one random non-identity permutation per step); 0 skips the extra video pass
    shuffle_weight: float = 0.0
    # start the VTM head's poolers from the first fused step's statistics (FusionHeads.standardize_poolers), so the
    # small pair-to-pair variation of the fused text and video CLS reaches their tanh; False (the paper) keeps the
    # usual init
    vtm_standardize: bool = False


def shuffled_order(frames: int, gen: torch.Generator) -> torch.Tensor:
    """A random order of ``frames`` frames other than the original one (``frames >= 2``)."""
    while True:
        perm = torch.randperm(frames, generator=gen)
        if not torch.equal(perm, torch.arange(frames)):
            return perm


def canonical_order(world: int, per_part: int, parts: int) -> torch.Tensor:
    """Index that reorders an all-gather into the order one process would have seen.

    Each rank holds ``parts`` blocks (positives, then scene negatives) of ``per_part`` items; gathered, the
    order is rank-major. One process sees part-major order (all positives, then all negatives).
    """
    c = torch.arange(world * per_part * parts)
    part, rest = c // (world * per_part), c % (world * per_part)
    rank, k = rest // per_part, rest % per_part
    return rank * (parts * per_part) + part * per_part + k


def local_positions(world: int, rank: int, per_part: int, parts: int) -> torch.Tensor:
    """Canonical positions of this rank's items, in its local order."""
    local = torch.arange(parts * per_part)
    return (local // per_part) * (world * per_part) + rank * per_part + local % per_part


class PretrainTask(nn.Module):
    """Model + objectives. Wrap this module (not the bare model) in DistributedDataParallel.

    Args:
        model: The EgoVLPv2 model.
        special_ids: Token ids MLM never masks.
        mask_id: The tokenizer's mask id.
        loss: Objective switches and weights.
        seed: Base seed of the per-step random choices.
    """

    def __init__(
        self,
        model: EgoVLPv2,
        special_ids: set[int],
        mask_id: int,
        loss: LossConfig,
        seed: int,
        fusion_from: int = 0,
        directional: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.directional = list(directional or [])  # verb ids whose clip played backwards shows another verb
        self.fusion_from = fusion_from  # first step with the fused losses (MLM, VTM)
        self.special_ids = frozenset(special_ids)
        self.mask_id = mask_id
        self.loss_cfg = loss
        self.seed = seed

    def forward(
        self,
        video: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        verb: torch.Tensor,
        noun: torch.Tensor,
        step: torch.Tensor,
        parts: int = 1,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step's loss.

        Args:
            video: Local clips ``(b, F, 3, H, W)``.
            input_ids: Local token ids ``(b, L)``.
            attention_mask: Local padding mask ``(b, L)``.
            verb: Multi-hot verbs ``(b, Cv)``.
            noun: Multi-hot nouns ``(b, Cn)``.
            step: The global step (a 0-d tensor), which seeds the random choices.
            parts: 2 when the batch is positives followed by scene negatives, else 1.

        Returns:
            The loss to back-propagate (scaled by the process count, which DDP's averaging undoes) and the
            global values of each part for logging.
        """
        m, cfg = self.model, self.loss_cfg
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        rank = torch.distributed.get_rank() if world > 1 else 0
        order = canonical_order(world, video.shape[0] // parts, parts).to(video.device)
        mine = local_positions(world, rank, video.shape[0] // parts, parts)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))

        # 1) dual pass: EgoNCE over the gathered batch
        v = gather_with_local_grad(m.encode_video(video, normalize=True))[order]
        t = gather_with_local_grad(m.encode_text(input_ids, attention_mask, normalize=True))[order]
        pos = None
        if cfg.egonce:
            pos = positive_mask(gather_no_grad(verb)[order], gather_no_grad(noun)[order])
        sim = t @ v.T  # (N, N), text rows
        nce = egonce_loss(sim, pos, m.temperature)
        all_ids, all_mask = gather_no_grad(input_ids)[order], gather_no_grad(attention_mask)[order]
        N = all_ids.shape[0]

        fused_on = int(step) >= self.fusion_from
        mlm = vtm = torch.zeros((), device=video.device)
        if fused_on and cfg.mlm_weight > 0:  # 2) fused pass on masked text: MLM
            masked, labels = mlm_mask(
                all_ids, all_mask, self.special_ids, self.mask_id, m.cfg.text.vocab_size, gen, cfg.mlm_probability
            )
            out = m.forward_fusion(video, masked[mine.to(video.device)], attention_mask)
            labels = labels[mine.to(video.device)]
            chosen = labels != -100  # decode only the masked positions: the vocabulary projection is the costly part
            mlm_sum, count = mlm_loss_sum(m.heads.mlm_logits(out.text_tokens[chosen]), labels[chosen])
            total = all_reduce_sum(torch.tensor(float(count), device=video.device)).clamp(min=1.0)
            mlm = mlm_sum / total

        if fused_on and cfg.vtm_weight > 0:  # 3) fused pass on re-sampled pairs: VTM with hard negatives
            plan = vtm_plan(sim, pos, m.temperature, gen)
            all_video = gather_no_grad(video)[order]
            ti, vi = plan.text_index[mine].to(video.device), plan.video_index[mine].to(video.device)
            if cfg.vtm_standardize and int(step) == self.fusion_from:
                self._standardize_vtm(all_video[vi], all_ids[ti], all_mask[ti])
            fused = m.forward_fusion(all_video[vi], all_ids[ti], all_mask[ti])
            vtm = F.cross_entropy(fused.vtm_logits, plan.labels[mine].to(video.device), reduction="sum") / N

        rev = torch.zeros((), device=video.device)
        if cfg.reverse_weight > 0 and self.directional:  # 4) the clip must beat itself played backwards
            rev = self._reverse_loss(video, verb, t[mine.to(video.device)], v[mine.to(video.device)])

        shuf = torch.zeros((), device=video.device)
        if cfg.shuffle_weight > 0 and video.shape[1] > 1:  # 5) the clip must beat itself with its frames shuffled
            perm = shuffled_order(video.shape[1], gen).to(video.device)
            shuffled = m.encode_video(video[:, perm], normalize=True)  # (b, E)
            local = mine.to(video.device)
            shuf = time_reversal_loss(t[local], v[local], shuffled, m.temperature) / N

        loss = nce + cfg.mlm_weight * mlm + cfg.vtm_weight * vtm + cfg.reverse_weight * rev + cfg.shuffle_weight * shuf
        logs = {"egonce": nce.detach(), "mlm": all_reduce_sum(mlm), "vtm": all_reduce_sum(vtm)}
        logs["reverse"], logs["shuffle"] = all_reduce_sum(rev), all_reduce_sum(shuf)
        logs["loss"] = logs["egonce"] + cfg.mlm_weight * logs["mlm"] + cfg.vtm_weight * logs["vtm"]
        logs["loss"] = logs["loss"] + cfg.reverse_weight * logs["reverse"] + cfg.shuffle_weight * logs["shuffle"]
        return loss * world, logs

    @torch.no_grad()
    def _standardize_vtm(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Start the VTM poolers from this step's pairs, their statistics summed over processes."""
        m = self.model
        out = m.forward_fusion(video, input_ids, attention_mask)
        m.heads.standardize_poolers(out.video_cls, out.text_tokens, all_reduce_sum)

    def _reverse_loss(
        self, video: torch.Tensor, verb: torch.Tensor, text: torch.Tensor, vid: torch.Tensor
    ) -> torch.Tensor:
        """Time-reversal negatives: ``-log sigmoid((s(t, v) - s(t, reversed v)) / tau)``, averaged over the
        global batch's clips whose verb has a reverse (this process's share of the sum).

        Args:
            video: Local clips ``(b, F, 3, H, W)``.
            verb: Local multi-hot verbs ``(b, Cv)``.
            text: Normalised local text embeddings ``(b, E)`` (gradients kept).
            vid: Normalised local video embeddings ``(b, E)`` (gradients kept).
        """
        m = self.model
        keep = verb[:, self.directional].any(dim=1)  # (b,)
        count = all_reduce_sum(keep.sum().to(torch.float32)).clamp(min=1.0)
        if not bool(keep.any()):  # after the count's all-reduce, so every process runs the same collectives
            return vid.new_zeros(())
        backwards = m.encode_video(video[keep].flip(1), normalize=True)  # (k, E)
        return time_reversal_loss(text[keep], vid[keep], backwards, m.temperature) / count

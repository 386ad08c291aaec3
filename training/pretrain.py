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
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.distributed import all_reduce_sum, gather_no_grad, gather_with_local_grad
from egovlpv2_edge.training.losses import (
    direction_loss,
    egonce_loss,
    margin_loss,
    mlm_loss_sum,
    mlm_mask,
    positive_mask,
    reverse_pair_loss,
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
    # weight of the reverse-pair term: each clip whose verb has a reverse and the same clip played backwards, scored
    # against its narration and the same narration with the reverse verb ("puts down the red cup" for a pick up): the
    # clip must match its narration and the backwards clip (which shows the reverse action) the reverse narration,
    # each way (a 2 x 2 contrast per clip). Unlike the time-reversal term, it never asks a clip to move away from the
    # text of what it shows. 0 (the paper) skips the extra video pass
    reverse_pair_weight: float = 0.0
    # weight of the direction term: the motion branch's direction head (video.motion_branch must be on) tells which
    # verb of its reverse pair each clip whose verb has one shows, on the clip and on it played backwards (a pick up
    # played backwards shows a put down). It reads the branch's own features, which EgoNCE barely reaches while the
    # branch's projection is small, so it trains the branch where the time-reversal and reverse-pair terms do not.
    # 0 (the paper) skips it
    direction_weight: float = 0.0
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
        fusion_from: First step with the fused losses.
        directional: Verb ids with a reverse (their clips get the time-reversal and reverse-pair terms).
        reverse_text: :func:`reverse_text_table` of the data, needed when ``loss.reverse_pair_weight > 0``.
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
        reverse_text: tuple[torch.Tensor, torch.Tensor] | None = None,
        first_of_pair: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.directional = list(directional or [])  # verb ids whose clip played backwards shows another verb
        # token ids and masks (Cv, Cn, L) of each (verb, noun)'s narration with the reverse verb (reverse_text_table)
        self.reverse_text = reverse_text
        self.first_of_pair = frozenset(first_of_pair or [])  # directional verbs listed before their reverse
        if loss.direction_weight > 0 and model.video.motion is None:
            raise ValueError("loss.direction_weight > 0 trains the motion branch; set model.video.motion_branch=16")
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

        rev = rev_pair = torch.zeros((), device=video.device)
        if (cfg.reverse_weight > 0 or cfg.reverse_pair_weight > 0) and self.directional:  # 4) and 5): reversed clips
            local = mine.to(video.device)
            rev, rev_pair = self._reverse_terms(video, verb, noun, t[local], v[local])

        direction = direction_acc = torch.zeros((), device=video.device)
        if cfg.direction_weight > 0 and self.directional:  # 6) which verb of its pair each directional clip shows
            direction, direction_acc = self._direction_term(video, verb)

        shuf = torch.zeros((), device=video.device)
        if cfg.shuffle_weight > 0 and video.shape[1] > 1:  # 7) the clip must beat itself with its frames shuffled
            perm = shuffled_order(video.shape[1], gen).to(video.device)
            shuffled = m.encode_video(video[:, perm], normalize=True)  # (b, E)
            local = mine.to(video.device)
            shuf = margin_loss(t[local], v[local], shuffled, m.temperature) / N

        extra = {"mlm": mlm, "vtm": vtm, "reverse": rev, "reverse_pair": rev_pair, "shuffle": shuf,
                 "direction": direction}  # fmt: skip
        weights = {"mlm": cfg.mlm_weight, "vtm": cfg.vtm_weight, "reverse": cfg.reverse_weight,
                   "reverse_pair": cfg.reverse_pair_weight, "shuffle": cfg.shuffle_weight,
                   "direction": cfg.direction_weight}  # fmt: skip
        loss = nce + sum(weights[k] * x for k, x in extra.items())
        logs = {"egonce": nce.detach()} | {k: all_reduce_sum(x) for k, x in extra.items()}
        logs["loss"] = logs["egonce"] + sum(weights[k] * logs[k] for k in extra)
        logs["direction_acc"] = direction_acc  # already global
        return loss * world, logs

    @torch.no_grad()
    def _standardize_vtm(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Start the VTM poolers from this step's pairs, their statistics summed over processes."""
        m = self.model
        out = m.forward_fusion(video, input_ids, attention_mask)
        m.heads.standardize_poolers(out.video_cls, out.text_tokens, all_reduce_sum)

    def _directional_clips(self, verb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The directional verb ids ``(D,)``, which of them each local clip has ``(b, D)``, the local clips with one
        ``(b,)`` and their global count (at least 1; an all-reduce every process runs)."""
        directional = torch.tensor(self.directional, device=verb.device)
        picked = verb[:, directional] > 0
        keep = picked.any(dim=1)
        return directional, picked, keep, all_reduce_sum(keep.sum().to(torch.float32)).clamp(min=1.0)

    def _reverse_terms(
        self, video: torch.Tensor, verb: torch.Tensor, noun: torch.Tensor, text: torch.Tensor, vid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The time-reversal and reverse-pair terms (each zero when its weight is), averaged over the global batch's
        clips whose verb has a reverse (this process's share of the sum); one backwards pass serves both.

        Time-reversal: :func:`~egovlpv2_edge.training.losses.margin_loss` of each narration ``t`` against its clip
        ``v`` and the same clip played backwards ``b``. Reverse pair:
        :func:`~egovlpv2_edge.training.losses.reverse_pair_loss` of ``v``, ``b``, ``t`` and the narration with the
        reverse verb on the clip's (first) noun.

        Args:
            video: Local clips ``(b, F, 3, H, W)``.
            verb: Local multi-hot verbs ``(b, Cv)``.
            noun: Local multi-hot nouns ``(b, Cn)``.
            text: Normalised local text embeddings ``(b, E)`` (gradients kept).
            vid: Normalised local video embeddings ``(b, E)`` (gradients kept).

        Raises:
            ValueError: If the reverse-pair term is on and the task was built without the reverse narrations.
        """
        m, cfg = self.model, self.loss_cfg
        if cfg.reverse_pair_weight > 0 and self.reverse_text is None:
            raise ValueError("loss.reverse_pair_weight > 0 needs the data's reverse narrations (reverse_text_table)")
        directional, picked, keep, count = self._directional_clips(verb)
        rev = pair = vid.new_zeros(())
        if not bool(keep.any()):  # after the count's all-reduce, so every process runs the same collectives
            return rev, pair
        t, v, tau = text[keep], vid[keep], m.temperature
        b = m.encode_video(video[keep].flip(1), normalize=True)  # (k, E)
        if cfg.reverse_weight > 0:
            rev = margin_loss(t, v, b, tau) / count
        if cfg.reverse_pair_weight > 0:
            v_id = directional[picked[keep].to(torch.float32).argmax(dim=1)]  # each clip's first directional verb
            n_id = noun[keep].argmax(dim=1)  # and its first noun
            ids, mask = (x.to(verb.device)[v_id, n_id] for x in self.reverse_text)
            r = m.encode_text(ids, mask, normalize=True)  # (k, E)
            pair = reverse_pair_loss(v, b, t, r, tau) / count
        return rev, pair

    def _direction_term(self, video: torch.Tensor, verb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The direction term over the global batch's clips whose verb has a reverse (this process's share of the
        mean :func:`~egovlpv2_edge.training.losses.direction_loss`) and the share of those readings it gets right.

        A clip with several directional verbs is labelled by its first. A process without such clips still runs
        the branch on an empty batch, so its head takes part in the gradient exchange.
        """
        m = self.model
        _, picked, keep, count = self._directional_clips(verb)
        first_mask = torch.tensor([v in self.first_of_pair for v in self.directional], device=verb.device)
        first = first_mask[picked[keep].to(torch.float32).argmax(dim=1)]  # (k,)
        x = video[keep]
        logits = m.video.motion.direction_logits(torch.cat([x, x.flip(1)]))  # (2k,)
        k = x.shape[0]
        loss = direction_loss(logits[:k], logits[k:], first) / count
        right = ((logits[:k] > 0) == first).sum() + ((logits[k:] > 0) != first).sum()
        acc = all_reduce_sum(right.detach().to(torch.float32)) / (2 * count)
        return loss, acc


def reverse_text_table(
    narrations: dict[tuple[int, int], str], tokenizer: Tokenizer, n_verbs: int, n_nouns: int, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and masks ``(Cv, Cn, L)`` of :func:`~egovlpv2_edge.training.data.taxonomy.reverse_narrations`
    (rows of verbs without a reverse are never read and stay 0).

    Args:
        narrations: ``(verb id, noun id)`` -> narration with the reverse verb.
        tokenizer: The run's tokenizer.
        n_verbs: Verb classes (the multi-hot width).
        n_nouns: Noun classes.
        max_length: The text encoder's token length.
    """
    ids = torch.zeros(n_verbs, n_nouns, max_length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    if narrations:
        keys = sorted(narrations)
        tok = tokenizer.encode([narrations[k] for k in keys], max_length=max_length)
        rows, cols = (torch.tensor(x) for x in zip(*keys, strict=True))
        ids[rows, cols] = torch.from_numpy(tok.input_ids).long()
        mask[rows, cols] = torch.from_numpy(tok.attention_mask).long()
    return ids, mask

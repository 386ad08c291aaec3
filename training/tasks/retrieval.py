"""Retrieval fine-tuning (EK-100 MIR style, reference §3): dual mode, multi-instance max-margin ranking.

Clips and captions are embedded by the two independent encoders (gates off). EK-100 MIR has no single right
caption per clip: the relevancy of caption i to clip j is the mean of the IoU of their verb-class sets and of
their noun-class sets (:func:`relevancy_from_tags`). The loss is a relevancy-aware max-margin ranking in both
directions: for an anchor with its own item (relevancy ``r_ii``, usually 1), every less relevant item j must
score at least ``margin * (r_ii - r_ij)`` below it; items as relevant as the anchor's own are not pushed away
(they are other instances of the same action).
"""

from __future__ import annotations

import torch
from torch import nn

from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.training.distributed import gather_no_grad, gather_with_local_grad, world_size

__all__ = ["RetrievalTask", "multi_instance_margin_loss", "relevancy_from_tags"]


def relevancy_from_tags(verb_a: torch.Tensor, noun_a: torch.Tensor, verb_b: torch.Tensor | None = None,
                        noun_b: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Relevancy ``(A, B)`` = mean of verb-set IoU and noun-set IoU from multi-hot tags ``(A, Cv)``, ``(A, Cn)``."""
    verb_b = verb_a if verb_b is None else verb_b
    noun_b = noun_a if noun_b is None else noun_b

    def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.float(), b.float()
        inter = a @ b.T  # (A, B)
        union = a.sum(1, keepdim=True) + b.sum(1)[None, :] - inter
        return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))

    return 0.5 * (iou(verb_a, verb_b) + iou(noun_a, noun_b))


def multi_instance_margin_loss(sim: torch.Tensor, rel: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Relevancy-weighted max-margin ranking over a square batch, both directions.

    Args:
        sim: Similarities ``(B, B)``, rows texts, columns clips, item i's own pair on the diagonal.
        rel: Relevancy ``(B, B)`` of the same pairs.
        margin: Margin for a pair of relevancy 0 (EK-100 MIR fine-tuning uses 0.2).

    Returns:
        Mean hinge over the contributing (anchor, other) pairs of both directions (0 when none contributes).
    """
    B = sim.shape[0]
    if sim.shape != (B, B) or rel.shape != (B, B):
        raise ValueError(f"sim {tuple(sim.shape)} and rel {tuple(rel.shape)} must both be square (B, B)")
    total, count = sim.new_zeros(()), 0
    for s, r in ((sim, rel), (sim.T, rel.T)):
        pos = s.diagonal().unsqueeze(1)  # (B, 1)
        r_pos = r.diagonal().unsqueeze(1)
        gap = (r_pos - r).clamp(min=0.0)  # (B, B): how much less relevant each other item is
        use = gap > 0
        hinge = torch.relu(margin * gap - (pos - s))
        total = total + hinge[use].sum()
        count += int(use.sum())
    return total / max(count, 1)


class RetrievalTask(nn.Module):
    """Model + multi-instance max-margin loss over dual embeddings.

    Args:
        model: The EgoVLPv2 model.
        margin: Ranking margin.
    """

    def __init__(self, model: EgoVLPv2, margin: float = 0.2) -> None:
        super().__init__()
        self.model, self.margin = model, margin

    def forward(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, verb: torch.Tensor,
                noun: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """Loss of one batch of clips ``(B, F, 3, H, W)``, their captions and multi-hot tags."""
        # over the global batch: embeddings gathered from every process, gradients kept on the local slice
        v = gather_with_local_grad(self.model.encode_video(video, normalize=True))  # (N, E)
        t = gather_with_local_grad(self.model.encode_text(ids, mask, normalize=True))  # (N, E)
        sim = t @ v.T  # (N, N) texts x clips
        rel = relevancy_from_tags(gather_no_grad(verb), gather_no_grad(noun))
        loss = multi_instance_margin_loss(sim, rel, self.margin)
        hit = (sim.argmax(1) == torch.arange(len(sim), device=sim.device)).float().mean()
        # every process holds the same global loss; DDP averages the local-slice gradients, so scale back up
        return loss * world_size(), {"loss": loss.detach(), "mimm": loss.detach(), "t2v_top1": hit.detach()}

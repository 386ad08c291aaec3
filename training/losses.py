"""Pre-training objectives of EgoVLPv2 (arXiv 2307.05463, Sec. 3.3; EgoVLP arXiv 2206.01670, Sec. 3.2).

* :func:`egonce_loss`: EgoNCE, a symmetric InfoNCE whose positives are every pair sharing a verb **and** a noun
  (action-aware positives) plus the diagonal; with no tags it is plain InfoNCE. Scene-aware negatives enter
  through the batch (same-video, same-60-s clips appended by the data loader).
* :func:`vtm_plan`: hard-negative pairs for video-text matching, drawn from the similarity matrix with every
  EgoNCE positive excluded.
* :func:`mlm_mask`: BERT masking (15 %, 80/10/10) of the text for masked language modelling.

Losses take plain tensors (the caller gathers across processes), so they test on one CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def positive_mask(verbs: torch.Tensor | None, nouns: torch.Tensor | None) -> torch.Tensor | None:
    """Action-aware positives ``P = (cos(V, V) * cos(N, N) + I) > 0`` for multi-hot tags ``(N, C)``.

    Returns None when either tag set is None (plain InfoNCE: the diagonal only).
    """
    if verbs is None or nouns is None:
        return None
    share_verb = (verbs.float() @ verbs.float().T) > 0  # (N, N)
    share_noun = (nouns.float() @ nouns.float().T) > 0
    eye = torch.eye(len(verbs), dtype=torch.bool, device=verbs.device)
    return (share_verb & share_noun) | eye


def egonce_loss(sim: torch.Tensor, positives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """EgoNCE over a cosine-similarity matrix, both directions.

    ``L = -1/N sum_i log sum_{j in P_i} softmax_j(S_ij / t) - 1/N sum_i log sum_{j in P_i} softmax_j(S_ji / t)``

    Args:
        sim: Cosine similarities ``(N, N)``, text rows and video columns.
        positives: Boolean positive mask ``(N, N)`` (symmetric, diagonal set) or None for plain InfoNCE.
        temperature: Softmax temperature (0.05 in the paper).

    Returns:
        The scalar loss.
    """
    N = sim.shape[0]
    if positives is None:
        positives = torch.eye(N, dtype=torch.bool, device=sim.device)
    logits = sim / temperature
    neg_inf = torch.finfo(logits.dtype).min
    t2v = torch.logsumexp(logits.masked_fill(~positives, neg_inf), 1) - torch.logsumexp(logits, 1)
    v2t = torch.logsumexp(logits.T.masked_fill(~positives, neg_inf), 1) - torch.logsumexp(logits.T, 1)
    return -(t2v.mean() + v2t.mean())


@dataclass(frozen=True)
class VTMPlan:
    """Which (text, video) pairs the VTM pass scores.

    Attributes:
        text_index: Index into the batch of the text of each pair ``(N,)``.
        video_index: Index into the batch of the video of each pair ``(N,)``.
        labels: 1 for a matching pair, 0 for a hard negative ``(N,)``.
    """

    text_index: torch.Tensor
    video_index: torch.Tensor
    labels: torch.Tensor


def vtm_plan(
    sim: torch.Tensor, positives: torch.Tensor | None, temperature: float, generator: torch.Generator
) -> VTMPlan:
    """Sample one VTM pair per batch item: half matching, half hard negatives.

    A negative keeps its text and takes a video drawn from ``softmax(S[i] / t)`` or, with probability 0.5, keeps
    its video and takes a text drawn from ``softmax(S[:, i] / t)``; EgoNCE positives (diagonal included) get
    zero weight, so a negative never shares a verb and a noun with its anchor.

    Args:
        sim: Cosine similarities ``(N, N)`` (text rows, video columns); gradients are not used.
        positives: The EgoNCE positive mask or None (then only the diagonal is excluded).
        temperature: Softmax temperature of the sampling weights.
        generator: Random source; the same seed gives the same plan whatever the process count.

    Returns:
        The :class:`VTMPlan` over the ``N`` items.
    """
    N = sim.shape[0]
    if positives is None:
        positives = torch.eye(N, dtype=torch.bool, device=sim.device)
    sim = sim.detach().float().cpu()
    positives = positives.cpu()
    labels = torch.zeros(N, dtype=torch.long)
    labels[torch.randperm(N, generator=generator)[: N // 2]] = 1
    keep_text = torch.rand(N, generator=generator) < 0.5
    w_t2v = torch.softmax(sim / temperature, dim=1).masked_fill(positives, 0.0)  # row i: videos for text i
    w_v2t = torch.softmax(sim.T / temperature, dim=1).masked_fill(positives.T, 0.0)  # row i: texts for video i
    text_index, video_index = torch.arange(N), torch.arange(N)
    for i in torch.nonzero(labels == 0).flatten().tolist():
        weights = w_t2v[i] if keep_text[i] else w_v2t[i]
        if weights.sum() <= 0:  # every other item is a positive: fall back to uniform over the batch
            weights = torch.ones(N).index_fill_(0, torch.tensor([i]), 0.0)
        j = int(torch.multinomial(weights, 1, generator=generator))
        if keep_text[i]:
            video_index[i] = j
        else:
            text_index[i] = j
    return VTMPlan(text_index, video_index, labels)


def mlm_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: set[int] | frozenset[int],
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose 15 % of the real, non-special tokens; 80 % become the mask token, 10 % a random token,
    10 % stay. Labels are the original ids at chosen positions and -100 elsewhere.

    Args:
        input_ids: Token ids ``(B, L)``.
        attention_mask: Padding mask ``(B, L)``.
        special_ids: Ids never masked (start, end, pad).
        mask_id: The mask token id.
        vocab_size: Size of the vocabulary random replacements come from.
        generator: Random source (CPU).
        probability: Chance that a token is chosen.

    Returns:
        ``(masked_ids, labels)``, both ``(B, L)``.
    """
    ids = input_ids.cpu()
    maskable = attention_mask.cpu().bool() & ~torch.isin(ids, torch.tensor(sorted(special_ids)))
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & maskable
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked.to(input_ids.device), labels.to(input_ids.device)


def margin_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Summed ``-log sigmoid((<a, p> - <a, n>) / tau)``: each anchor must match its positive better than its one
    hard negative.

    Time-reversal negatives pass texts as anchors, their clips as positives and the same clips played backwards as
    negatives (shuffled-frame negatives likewise); :func:`reverse_pair_loss` combines four such terms.

    Args:
        anchor: Normalised embeddings ``(k, E)``.
        positive: Normalised embeddings paired with them ``(k, E)``.
        negative: Normalised hard negatives ``(k, E)``.
        temperature: The contrastive temperature.
    """
    margin = ((anchor * positive).sum(-1) - (anchor * negative).sum(-1)) / temperature
    return -F.logsigmoid(margin).sum()


def reverse_pair_loss(
    clip: torch.Tensor, backward: torch.Tensor, text: torch.Tensor, reverse_text: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Summed 2 x 2 contrast of a clip and the same clip played backwards against its narration and the narration
    with the reverse verb: the clip picks its narration, the backwards clip (the reverse action) the reverse
    narration, and each narration picks its clip; the mean of the four :func:`margin_loss` terms per item.

    Args:
        clip: Normalised clip embeddings ``(k, E)``.
        backward: Normalised embeddings of the same clips played backwards ``(k, E)``.
        text: Normalised embeddings of their narrations ``(k, E)``.
        reverse_text: Normalised embeddings of the narrations with the reverse verb ``(k, E)``.
        temperature: The contrastive temperature.
    """
    tau, rev = temperature, reverse_text
    video_side = margin_loss(clip, text, rev, tau) + margin_loss(backward, rev, text, tau)
    text_side = margin_loss(text, clip, backward, tau) + margin_loss(rev, backward, clip, tau)
    return (video_side + text_side) / 4


def direction_loss(forward: torch.Tensor, backward: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Summed direction term: which verb of its reverse pair each clip shows, read on the clip and on the same clip
    played backwards (which shows the other verb); the mean of the two binary cross-entropies per clip.

    Args:
        forward: Logits ``(k,)`` that each clip shows the first verb of its pair.
        backward: The same logits for the clips played backwards ``(k,)``.
        first: 1 where the clip's verb is the first of its pair (pick up of pick up / put down), else 0 ``(k,)``.
    """
    y = first.to(forward.dtype)
    bce = F.binary_cross_entropy_with_logits
    return (bce(forward, y, reduction="sum") + bce(backward, 1 - y, reduction="sum")) / 2


def vtm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of VTM logits ``(N, 2)`` against 0/1 labels (class 1 = match)."""
    return F.cross_entropy(logits, labels)


def mlm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed MLM cross-entropy over masked positions and their count (the caller divides by the global count).

    ``logits`` is ``(..., V)`` and ``labels`` the matching ``(...)`` with -100 where nothing is predicted.
    """
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())

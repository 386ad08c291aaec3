"""Video QA task (EgoTaskQA style, reference §3): question fused with the clip, answer head on the fused video CLS.

``mode="fusion"`` (the paper) runs the question and the clip through the fused top layers and classifies the
fusion-normed video CLS with :class:`~egovlpv2_edge.training.tasks.heads.QAHead`. ``mode="dual"`` is the
unfused baseline: the same head on ``[video CLS; text feature]`` of the two independent encoders.

Questions that come with choices can also be answered by VTM: each choice is appended to the question and
fused with the clip; the choice with the highest ``softmax(VTM)[match]`` wins. Fine-tuning adds a VTM loss on
the right choice against one wrong choice (``mc_weight``) so that scoring improves too.

:func:`fit_dual_qa_head` fits a third, gates-off head after training: the same classifier over the two
L2-normalised dual embeddings ``[video embedding; text embedding]`` (:func:`embedding_features`), the vectors a
device already keeps in its index and computes for every query, so it answers without a fused pass. Checkpoints
carry it as ``task["dual_head"]``; the exporter writes it into the package as ``heads/qa_dual.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from egovlpv2_edge.model import EgoVLPv2, FusionOutput
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.data.qa import QADataset
from egovlpv2_edge.training.optim import CROSS_MARK
from egovlpv2_edge.training.tasks.heads import QAHead

__all__ = ["QATask", "choice_texts", "dual_features", "dual_text_features", "dual_video_features",
           "embedding_features", "embedding_text_features", "embedding_video_features", "fit_dual_qa_head",
           "fusion_stream_from_dual", "qa_feature_set", "qa_parts", "qa_text_length", "scale_video_cross_attention",
           "train_cross_modal_only"]  # fmt: skip

log = logging.getLogger(__name__)

Mode = Literal["fusion", "dual"]


def qa_text_length(model: EgoVLPv2, wanted: int = 30) -> int:
    """Question length: the reference's 30 tokens, capped by the text encoder's position table."""
    cfg = model.cfg.text
    reserved = cfg.pad_id + 1 if cfg.variant == "roberta" else 0  # RoBERTa positions start after the pad id
    return max(4, min(wanted, cfg.max_positions - reserved))


def dual_video_features(model: EgoVLPv2, video: torch.Tensor) -> torch.Tensor:
    """The unfused video CLS ``(B, Dv)`` (before the projection): the video half of :func:`dual_features`."""
    return model.video.features(model.video_upper_tokens(model.video_lower(video, "dual")))


def dual_text_features(model: EgoVLPv2, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unfused pooled text feature ``(B, Dt)``: the text half of :func:`dual_features`."""
    return model.pool_text(model.text_upper_tokens(model.text_lower(ids, mask), mask), mask)


def dual_features(model: EgoVLPv2, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unfused ``[video CLS; text feature]`` ``(B, Dv + Dt)``: the inputs of the dual baseline head."""
    return torch.cat([dual_video_features(model, video), dual_text_features(model, ids, mask)], dim=-1)


def embedding_video_features(model: EgoVLPv2, video: torch.Tensor) -> torch.Tensor:
    """The L2-normalised dual video embedding ``(B, E)``: the video half of :func:`embedding_features`."""
    return model.encode_video(video, normalize=True)


def embedding_text_features(model: EgoVLPv2, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The L2-normalised dual text embedding ``(B, E)``: the text half of :func:`embedding_features`."""
    return model.encode_text(ids, mask, normalize=True)


def embedding_features(model: EgoVLPv2, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gates-off ``[video embedding; text embedding]`` ``(B, 2E)``, each L2-normalised: what a package's dual QA
    head reads (the ``video_upper`` and ``text_upper`` graph outputs)."""
    return torch.cat([embedding_video_features(model, video), embedding_text_features(model, ids, mask)], -1)


_FEATURE_PARTS = {  # kind -> (video part, text part) of the frozen features a head is fitted on
    "dual": (dual_video_features, dual_text_features),
    "embedding": (embedding_video_features, embedding_text_features),
}


def load_workers() -> int:
    """Clip-decoding workers for a pass over a QA split: one on a 2-core machine, up to 8 where cores allow."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@torch.no_grad()
def qa_parts(model: EgoVLPv2, tokenizer: Tokenizer, data: QADataset, length: int,
             video_part: Callable[[EgoVLPv2, torch.Tensor], torch.Tensor],
             text_part: Callable[[EgoVLPv2, torch.Tensor, torch.Tensor], torch.Tensor],
             shuffle_frames: bool = False, show: bool = False, desc: str = "QA clips",
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``video_part`` of each distinct window's clip (encoded once, however many questions ask about it) and
    ``text_part`` of each question at ``length`` tokens (each distinct question text encoded once).

    Args:
        model: The model (call in eval mode).
        tokenizer: Its tokenizer.
        data: A :class:`~egovlpv2_edge.training.data.qa.QADataset` (eval mode).
        length: Question length in tokens.
        video_part: ``(model, frames (B, F, 3, H, W)) -> (B, ...)``.
        text_part: ``(model, ids (B, L), mask (B, L)) -> (B, ...)``.
        shuffle_frames: Shuffle each clip's frames (the order control; a fixed seed).
        show: Progress bar (``desc``).

    Returns:
        The windows' video parts ``(W, ...)``, each item's window index ``(N,)``, the questions' text parts
        ``(N, ...)`` and their attention masks ``(N, length)``.
    """
    from torch.utils.data import DataLoader, Subset

    from egovlpv2_edge.progress import progress
    from egovlpv2_edge.training.data.qa import collate_qa
    from egovlpv2_edge.training.evaluate import _shuffle_frames

    device = next(model.parameters()).device
    first, of = data.windows()
    gen = torch.Generator().manual_seed(0)
    clips = []
    loader = DataLoader(Subset(data, first), batch_size=32, collate_fn=collate_qa, num_workers=load_workers())
    for b in progress(loader, desc=desc, disable=not show, leave=False):
        video = torch.stack([_shuffle_frames(x, gen) for x in b["video"]]) if shuffle_frames else b["video"]
        clips.append(video_part(model, video.to(device)).cpu())
    questions = [q.question for q in data.items]
    distinct = list(dict.fromkeys(questions))  # templated questions repeat across windows: each is encoded once
    tok = tokenizer.encode(distinct, max_length=length)
    ids, mask = torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask)
    texts = [text_part(model, i.to(device), m.to(device)).cpu() for i, m in zip(ids.split(256), mask.split(256),
                                                                              strict=True)]  # fmt: skip
    row = {q: k for k, q in enumerate(distinct)}
    which = torch.tensor([row[q] for q in questions], dtype=torch.long)
    return torch.cat(clips), torch.tensor(of), torch.cat(texts)[which], mask[which]


def qa_feature_set(model: EgoVLPv2, tokenizer: Tokenizer, data: QADataset, length: int, kind: str = "dual",
                   shuffle_frames: bool = False, show: bool = False) -> torch.Tensor:  # fmt: skip
    """Frozen unfused features ``(len(data), D)`` of every QA item: :func:`dual_features` (``kind="dual"``) or
    :func:`embedding_features` (``"embedding"``), with each distinct window's clip encoded once (a training window
    carries several questions) and each question at ``length`` tokens (:func:`qa_parts`).
    """
    if kind not in _FEATURE_PARTS:
        raise ValueError(f"kind={kind!r}; valid: {', '.join(_FEATURE_PARTS)}")
    clips, of, texts, _ = qa_parts(model, tokenizer, data, length, *_FEATURE_PARTS[kind], shuffle_frames, show,
                                   f"QA {kind} features")  # fmt: skip
    return torch.cat([clips[of], texts], dim=-1)


def fit_dual_qa_head(model: EgoVLPv2, tokenizer: Tokenizer, data_root: str | Path, answers: Sequence[str],
                     epochs: int = 30, dropout: float = 0.2, seed: int = 0,
                     show: bool = True) -> dict[str, Any]:  # fmt: skip
    """Fit the gates-off QA head on the model's dual embeddings of the QA train questions (model frozen).

    Args:
        model: The (fine-tuned or distilled) model whose embeddings the head reads.
        tokenizer: Its tokenizer.
        data_root: Dataset root with ``qa.json`` and ``videos/``.
        answers: The answer vocabulary (index = class id), normally the fused QA head's, so both share ``"qa"``.
        epochs: Epochs over the cached embeddings.
        dropout: The head's dropout.
        seed: Head initialisation and batch order.
        show: Progress bar and a log line.

    Returns:
        The checkpoint entry ``{"config", "state", "answers", "questions", "train_accuracy"}``
        (:func:`~egovlpv2_edge.training.tasks.checkpoint.dual_qa_head` reads it back).
    """
    from egovlpv2_edge.training.data.qa import read_qa
    from egovlpv2_edge.training.tasks._setup import ensure_task_files, read_meta
    from egovlpv2_edge.training.tasks.heads import fit_qa_head, head_accuracy

    root, v = Path(data_root), model.cfg.video
    ds = QADataset(read_qa(ensure_task_files(root, "qa.json")), root / "videos", "train", v.num_frames, v.img_size,
                   "eval", read_meta(root))  # fmt: skip
    was_training = model.training
    model.eval()
    index = {a: i for i, a in enumerate(answers)}
    # the question as the device encodes it: the text graph's length (model.cfg.text.max_length)
    x = qa_feature_set(model, tokenizer, ds, model.cfg.text.max_length, "embedding", show=show)
    y = torch.tensor([index.get(q.answer, -1) for q in ds.items])
    x, y = x[y >= 0], y[y >= 0]  # questions whose answer the head scores
    model.train(was_training)
    if len(y) == 0:
        raise ValueError(f"no QA train question in {data_root} has an answer among the {len(answers)} given")
    torch.manual_seed(seed)
    head = QAHead(x.shape[1], len(answers), dropout)
    loss = fit_qa_head(head, x, y, epochs, seed=seed)
    acc = head_accuracy(head, x, y)
    if show:
        log.info("dual QA head: %d epochs on %d questions' [video; text] embeddings, loss %.3f, train accuracy %.3f",
                 epochs, len(y), loss, acc)  # fmt: skip
    return {"config": head.config(), "state": head.eval().state_dict(), "answers": list(answers),
            "questions": len(y), "train_accuracy": acc}  # fmt: skip


def choice_texts(question: str, choices: Sequence[str]) -> list[str]:
    """The texts VTM scores for multiple choice: the question followed by each choice."""
    return [f"{question} {c}" for c in choices]


class QATask(nn.Module):
    """Model + QA head + losses.

    Args:
        model: The EgoVLPv2 model.
        answer_set: The closed answer vocabulary (saved with the checkpoint).
        mode: ``"fusion"`` or ``"dual"``.
        dropout: Head dropout.
        mc_weight: Weight of the multiple-choice VTM loss (fusion mode only; 0 = off).
    """

    def __init__(self, model: EgoVLPv2, answer_set: Sequence[str], mode: Mode = "fusion", dropout: float = 0.2,
                 mc_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if mode not in ("fusion", "dual"):
            raise ValueError(f"mode={mode!r}; valid: fusion, dual")
        self.model, self.mode, self.mc_weight = model, mode, mc_weight
        self.answer_set = tuple(answer_set)
        width = model.cfg.video.width + (model.cfg.text.width if mode == "dual" else 0)
        self.head = QAHead(width, len(self.answer_set), dropout)

    def fused(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> FusionOutput:
        """The fused pass over clips ``(B, F, 3, H, W)``, or over the tokens entering the fused layers
        ``(B, T, Dv)`` when those were computed once (``qa.train=fusion``)."""
        if video.ndim == 5:
            return self.model.forward_fusion(video, ids, mask)
        if video.ndim != 3:
            shape = tuple(video.shape)
            raise ValueError(f"video must be clips (B, F, 3, H, W) or fused-layer tokens (B, T, D), got {shape}")
        return self.model.forward_fusion_tokens(video, ids, mask)

    def features(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Head inputs ``(B, D)``: the fused video CLS, or the dual concatenation."""
        if self.mode == "dual":
            return dual_features(self.model, video, ids, mask)
        return self.fused(video, ids, mask).video_cls  # (B, Dv), fusion-normed

    def logits(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Answer logits ``(B, A)``."""
        return self.head(self.features(video, ids, mask))

    def forward(
        self,
        video: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        answer: torch.Tensor,
        mc_ids: torch.Tensor | None = None,
        mc_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch.

        Args:
            video: Clips ``(B, F, 3, H, W)``, or the tokens entering the fused layers ``(B, T, Dv)``.
            ids: Question ids ``(B, L)``.
            mask: Question mask ``(B, L)``.
            answer: Answer indices ``(B,)``.
            mc_ids: Optional ``(2B, L)`` ids of "question + right choice" (first B) and "question + a wrong
                choice" (last B) for the VTM loss.
            mc_mask: Their mask.

        Returns:
            The loss and its parts for logging (``qa``, ``mc``, ``acc``).
        """
        logits = self.logits(video, ids, mask)
        qa = F.cross_entropy(logits, answer)
        logs = {"qa": qa.detach(), "acc": (logits.argmax(-1) == answer).float().mean().detach()}
        loss = qa
        if self.mode == "fusion" and self.mc_weight > 0 and mc_ids is not None and mc_mask is not None:
            B = video.shape[0]
            vtm = self.fused(torch.cat([video, video]), mc_ids, mc_mask).vtm_logits  # (2B, 2)
            labels = torch.cat([torch.ones(B), torch.zeros(B)]).long().to(video.device)
            mc = F.cross_entropy(vtm, labels)
            loss = loss + self.mc_weight * mc
            logs["mc"] = mc.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    @torch.no_grad()
    def vtm_choice_scores(self, video: torch.Tensor, question: str, choices: Sequence[str], tokenizer: Tokenizer,
                          length: int) -> torch.Tensor:  # fmt: skip
        """``softmax(VTM)[match]`` of each choice ``(K,)`` for one clip ``(F, 3, H, W)``."""
        tok = tokenizer.encode(choice_texts(question, choices), max_length=length)
        ids = torch.from_numpy(tok.input_ids).to(video.device)
        mask = torch.from_numpy(tok.attention_mask).to(video.device)
        clips = video.unsqueeze(0).expand(len(choices), *video.shape)
        return torch.softmax(self.model.forward_fusion(clips, ids, mask).vtm_logits, dim=-1)[:, 1]


def fusion_stream_from_dual(model: EgoVLPv2) -> None:
    """Start the fusion stream's own CLS token and final norm from the dual stream's.

    The fused stream reads its clip through a CLS token of its own (the reference's model-level ``cls_token``
    and ``norm``), trained only by the fused pre-training losses. Where those did not learn (the CPU teachers:
    VTM stays at chance), that token gathers nothing a QA head can use, and the head learns the answer prior
    alone. Copied from the dual stream, the fused video CLS starts as the contrastively trained clip feature
    plus what the gated cross-attention reads from the question, and fine-tuning goes on from there.
    """
    with torch.no_grad():
        if model.fusion_cls_token is not None:
            model.fusion_cls_token.copy_(model.video.cls_token)
        model.fusion_norm.weight.copy_(model.video.norm.weight)
        model.fusion_norm.bias.copy_(model.video.norm.bias)


def scale_video_cross_attention(model: EgoVLPv2, scale: float) -> None:
    """Multiply the output projection (weight and bias) of every video-side cross-attention branch by ``scale``."""
    with torch.no_grad():
        for block in model.video.blocks:
            if block.attn.cross is not None:
                block.attn.cross.proj.weight.mul_(scale)
                block.attn.cross.proj.bias.mul_(scale)


CROSS_MODAL_PREFIXES = ("fusion_norm.", "heads.")


def train_cross_modal_only(model: EgoVLPv2) -> int:
    """Freeze everything but the cross-modal parameters: every cross-attention branch (gates included), the fusion
    norm and the fusion heads. Dual mode never runs them, so the dual encoders stay exactly as they were. The
    fusion CLS token stays frozen too: it enters at the bottom of the video encoder, so the tokens entering the
    fused layers can be computed once. Returns the number of trainable parameters."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(CROSS_MARK in name or name.startswith(CROSS_MODAL_PREFIXES))
        n += p.numel() if p.requires_grad else 0
    return n

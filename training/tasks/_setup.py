"""Per-task pieces of the fine-tuning loop: dataset, collate, one training step, head and vocabularies."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.distributed import DistInfo, all_gather_indexed
from egovlpv2_edge.training.tasks.finetune import FinetuneConfig, TaskSetup

log = logging.getLogger(__name__)


def ensure_task_files(root: Path, name: str) -> Path:
    """``root/name``; derived from ``actions.jsonl`` first when a synthetic dataset predates the task splits."""
    path = root / name
    if not path.is_file() and (root / "actions.jsonl").is_file():
        from egovlpv2_edge.training.data.synth import write_task_files

        write_task_files(root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; generate the dataset with 'egovlp data synth'")
    return path


def read_meta(root: Path) -> dict:
    """``meta.json`` of a dataset, or ``{}``."""
    path = root / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _tokens(tok: Tokenizer, texts: list[str], length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    b = tok.encode(texts, max_length=length)
    return torch.from_numpy(b.input_ids).to(device), torch.from_numpy(b.attention_mask).to(device)


def _qa(cfg: FinetuneConfig, model: EgoVLPv2, tok: Tokenizer, info: DistInfo) -> TaskSetup:
    device = info.device
    from egovlpv2_edge.training.data.qa import QADataset, collate_qa, read_qa
    from egovlpv2_edge.training.tasks.qa import (
        QATask,
        fusion_stream_from_dual,
        qa_text_length,
        scale_video_cross_attention,
        train_cross_modal_only,
    )

    root = Path(cfg.data)
    qa = read_qa(ensure_task_files(root, "qa.json"))
    v = model.cfg.video
    if cfg.qa.mode == "fusion" and cfg.qa.fusion_from_dual:
        fusion_stream_from_dual(model)
        log.info("qa.fusion_from_dual: the fusion stream starts from the dual stream's CLS token and final norm")
    if cfg.qa.mode == "fusion" and cfg.qa.video_cross_scale != 1.0:
        scale_video_cross_attention(model, cfg.qa.video_cross_scale)
        log.info("qa.video_cross_scale: video cross-attention outputs x%g", cfg.qa.video_cross_scale)
    task = QATask(model, qa.answer_set, cfg.qa.mode, cfg.qa.dropout, cfg.qa.mc_weight).to(device)
    length = qa_text_length(model, cfg.qa.text_length)
    if cfg.qa.train == "fusion":
        n = train_cross_modal_only(model)
        log.info("qa.train=fusion: %d trainable backbone parameters (cross-modal); the dual encoders stay frozen", n)
        clips = QADataset(qa, root / "videos", "train", v.num_frames, v.img_size, "eval", read_meta(root))
        data: Dataset = _FeatureSet(fused_layer_tokens(model, clips, info, cfg.num_workers))
    else:
        data = QADataset(qa, root / "videos", "train", v.num_frames, v.img_size, "train", read_meta(root), cfg.seed)

    def step(run: nn.Module, batch: dict[str, Any], i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids, mask = _tokens(tok, batch["question"], length, device)
        mc_ids = mc_mask = None
        if task.mode == "fusion" and task.mc_weight > 0:
            first = info.rank * len(batch["question"])  # position of this process's first item in the global batch
            right, wrong = [], []
            items = zip(batch["question"], batch["choices"], batch["answer_choice"].tolist(), strict=True)
            for k, (q, ch, a) in enumerate(items):
                rng = np.random.default_rng([cfg.seed, i, 31, first + k])  # the same draw on any process count
                others = [c for j, c in enumerate(ch) if j != a] or ["nothing"]
                right.append(f"{q} {ch[a]}" if ch else q)
                wrong.append(f"{q} {others[int(rng.integers(len(others)))]}")
            mc_ids, mc_mask = _tokens(tok, right + wrong, length, device)
        video = batch["video"].to(device).float()  # clips, or float16 fused-layer tokens (qa.train=fusion)
        return run(video, ids, mask, batch["answer"].to(device), mc_ids, mc_mask)

    if cfg.qa.head_warmup > 0:
        warm_qa_head(task, data, tok, length, cfg.qa.head_warmup, cfg.seed, device, cfg.num_workers, info.is_main)
    params = {"text_length": length, "types": sorted({q.type for q in qa.items}), "train": cfg.qa.train}
    return TaskSetup(task, data, collate_qa, step, {"answers": list(qa.answer_set)}, params, task.head, cfg.qa.mode)


WARM_START_QUESTIONS = 2500  # a head's warm start reads at most this many training questions (a random subset)


def warm_start_subset(data: Dataset, seed: int, limit: int = WARM_START_QUESTIONS) -> Dataset:
    """``data``, or a seeded random subset of ``limit`` of its items: a QA head's warm start (a linear probe first)
    needs a few thousand questions, and every training window asks several."""
    from torch.utils.data import Subset

    if len(data) <= limit:
        return data
    pick = np.random.default_rng([seed, 4099]).choice(len(data), size=limit, replace=False)
    return Subset(data, sorted(int(i) for i in pick))


def warm_qa_head(task: nn.Module, data: Dataset, tok: Tokenizer, length: int, epochs: int, seed: int,
                 device: torch.device, workers: int = 1, show: bool = True) -> None:  # fmt: skip
    """Fit the QA task's answer head alone on the starting model's features of ``data`` (one pass, no gradients
    into the model), before fine-tuning. Every process computes the same head."""
    from torch.utils.data import DataLoader

    from egovlpv2_edge.progress import progress
    from egovlpv2_edge.training.data.qa import collate_qa
    from egovlpv2_edge.training.tasks.heads import fit_qa_head, head_accuracy

    cached = getattr(data, "cached", False)
    loader = DataLoader(warm_start_subset(data, seed), batch_size=64, collate_fn=collate_qa,
                        num_workers=0 if cached else workers)  # fmt: skip
    was_training, xs, ys = task.training, [], []
    task.eval()
    with torch.no_grad():
        for b in progress(loader, desc="QA head warm start", disable=not show, leave=False):
            ids, mask = _tokens(tok, b["question"], length, device)
            xs.append(task.features(b["video"].to(device).float(), ids, mask).cpu())
            ys.append(b["answer"])
    task.train(was_training)
    x, y = torch.cat(xs), torch.cat(ys)
    loss = fit_qa_head(task.head, x, y, epochs, seed=seed)
    acc = head_accuracy(task.head, x, y)
    if show:
        log.info("QA head warm start: %d epochs on %d items' features, loss %.3f, train accuracy %.3f",
                 epochs, len(y), loss, acc)  # fmt: skip


def _retrieval(cfg: FinetuneConfig, model: EgoVLPv2, tok: Tokenizer, info: DistInfo) -> TaskSetup:
    device = info.device
    from egovlpv2_edge.training.data.dataset import EgoClipDataset, collate
    from egovlpv2_edge.training.tasks.retrieval import RetrievalTask

    root = Path(cfg.data)
    v = model.cfg.video
    data = EgoClipDataset(root / "egoclip.csv", root / "videos", v.num_frames, v.img_size, split="train",
                          mode="train", seed=cfg.seed)  # fmt: skip
    task = RetrievalTask(model, cfg.retrieval.margin).to(device)
    length = model.cfg.text.max_length

    def step(run: nn.Module, batch: dict[str, Any], i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids, mask = _tokens(tok, batch["text"], length, device)
        return run(batch["video"].to(device), ids, mask, batch["verb"].to(device), batch["noun"].to(device))

    return TaskSetup(task, data, collate, step, {}, {"margin": cfg.retrieval.margin}, None, "dual")


def fused_layer_tokens(model: EgoVLPv2, clips: Dataset, info: DistInfo, workers: int = 1) -> list[dict[str, Any]]:
    """Each item of ``clips`` (a QA dataset, eval mode) with its ``video`` replaced by the tokens entering the fused
    layers (fusion stream, frozen lower layers, float16 to halve the memory), computed once per distinct window
    and shared by the window's questions. Under ``torchrun`` each process computes every ``world``-th window and
    all of them end up with the whole list, in order."""
    from torch.utils.data import DataLoader, Subset

    from egovlpv2_edge.progress import progress

    first, of = clips.windows()
    mine = range(info.rank, len(first), info.world_size)  # positions in `first` (window indices)
    loader = DataLoader(Subset(clips, [first[w] for w in mine]), batch_size=16, num_workers=workers, collate_fn=list)
    was_training, out = model.training, []
    model.eval()
    bar = progress(total=len(mine), desc="QA clip tokens (once per window)", disable=not info.is_main, leave=False)
    with torch.no_grad():
        for items in loader:
            frames = torch.stack([it["video"] for it in items]).to(info.device)
            out += list(model.video_lower(frames, "fusion").to("cpu", torch.float16))
            bar.update(len(items))
    bar.close()
    model.train(was_training)
    tokens = all_gather_indexed(list(zip(mine, out, strict=True)), info.world_size)
    items = [{**clips.fields(i), "video": tokens[w]} for i, w in enumerate(of)]
    if info.is_main:
        mb = sum(t.numel() * 2 for t in tokens) / 2**20
        log.info("QA clip tokens: %d questions over %d windows, %.0f MiB", len(items), len(tokens), mb)
    return items


class _FeatureSet(Dataset):
    """Items computed once (cached NLQ query features; QA clip tokens): the loop reads them without workers."""

    cached = True

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def collate_spans(items: list, window_s: float) -> dict[str, torch.Tensor]:
    """Pad per-query features ``(N_i, D)`` to ``(B, N, D)`` with a validity mask and start/end targets."""
    from egovlpv2_edge.training.tasks.nlq import span_targets

    n = max(it.features.shape[0] for it in items)
    D = items[0].features.shape[1]
    feats = torch.zeros(len(items), n, D)
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    sim = torch.zeros(len(items), n)
    text = torch.stack([it.text for it in items])  # (B, L, Dt): queries share the fixed text length
    text_mask = torch.stack([it.text_mask for it in items])
    s, e = [], []
    for k, it in enumerate(items):
        m = it.features.shape[0]
        feats[k, :m], mask[k, :m], sim[k, :m] = it.features, True, it.sim
        a, b = span_targets(it.gt, m, window_s)
        s.append(a)
        e.append(b)
    return {"features": feats, "mask": mask, "text": text, "text_mask": text_mask, "sim": sim,
            "start": torch.tensor(s), "end": torch.tensor(e)}  # fmt: skip


class NLQHeadTask(nn.Module):
    """Frozen model + trainable span head."""

    def __init__(self, model: EgoVLPv2, hidden: int, layers: int, heads: int, dropout: float = 0.1,
                 sim_prior: float = 0.0, fused: bool = True, query: bool = True) -> None:  # fmt: skip
        super().__init__()
        from egovlpv2_edge.training.tasks.heads import SpanHead

        self.model = model
        self.head = SpanHead(model.cfg.video.width if fused else 0, hidden, layers, heads, dropout,
                             model.cfg.text.width if query else 0, True, sim_prior)  # fmt: skip

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Span loss of a padded batch."""
        from egovlpv2_edge.training.tasks.nlq import span_loss

        start, end = self.head(batch["features"], batch["mask"], batch["text"], batch["text_mask"], batch["sim"])
        loss = span_loss(start, end, batch["start"], batch["end"])
        hit = ((start.argmax(-1) == batch["start"]) & (end.argmax(-1) == batch["end"])).float().mean()
        return loss, {"loss": loss.detach(), "span": loss.detach(), "exact": hit.detach()}


def _nlq(cfg: FinetuneConfig, model: EgoVLPv2, tok: Tokenizer, info: DistInfo) -> TaskSetup:
    device = info.device
    from egovlpv2_edge.training.data.nlq import read_nlq
    from egovlpv2_edge.training.data.video import ChunkedVideoStore
    from egovlpv2_edge.training.tasks.nlq import extract_features, span_targets

    root = Path(cfg.data)
    meta = read_meta(root)
    clips = read_nlq(ensure_task_files(root, "nlq_train.json"))
    store = ChunkedVideoStore(root / "videos", float(meta.get("chunk_seconds", 600.0)), meta.get("fps"))
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    n = cfg.nlq
    feats = extract_features(model, tok, store, clips, n.window_s, n.max_queries, info.is_main,
                             shard=(info.rank, info.world_size), fused=n.fused_features)  # fmt: skip
    task = NLQHeadTask(model, n.hidden, n.layers, n.heads, n.dropout, n.sim_prior, n.fused_features,
                       n.query_tokens).to(device)  # fmt: skip
    task.head.train()

    def step(run: nn.Module, batch: dict[str, torch.Tensor], i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return run({k: v.to(device) for k, v in batch.items()})

    def collate(items: list) -> dict[str, torch.Tensor]:
        return collate_spans(items, cfg.nlq.window_s)

    lengths = [f.gt[1] - f.gt[0] for f in feats]
    windows = [e - s + 1 for s, e in (span_targets(f.gt, f.features.shape[0], cfg.nlq.window_s) for f in feats)]
    # decoding keeps spans no longer than any train target
    params = {"window_s": cfg.nlq.window_s, "mean_train_span_s": float(np.mean(lengths)) if lengths else 0.0,
              "max_windows": int(max(windows, default=0))}  # fmt: skip
    return TaskSetup(task, _FeatureSet(feats), collate, step, {}, params, task.head,
                     "fusion" if n.fused_features else "dual")  # fmt: skip


def build(cfg: FinetuneConfig, model: EgoVLPv2, tok: Tokenizer, info: DistInfo) -> TaskSetup:
    """The task's setup for :func:`~egovlpv2_edge.training.tasks.finetune.finetune` (on ``info.device``)."""
    return {"qa": _qa, "retrieval": _retrieval, "nlq": _nlq}[cfg.task](cfg, model, tok, info)

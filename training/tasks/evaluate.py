"""Evaluation of fine-tuned checkpoints against their baselines, as printable tables.

* **QA**: answer-head accuracy (overall and per question type) against the answer prior (the most frequent
  train answer of each question type) and against the same head on dual (unfused) features of the same
  backbone, trained here on the train split (a probe: the backbone is frozen for both); multiple choice by
  VTM score and by the head restricted to the choices; optionally with shuffled frames (the order control).
* **Retrieval**: mAP and nDCG, text-to-video and video-to-text, against the pre-trained zero-shot model (the
  run's ``init`` checkpoint or ``--baseline``) and random scores.
* **NLQ**: R@1/R@5 at IoU 0.3/0.5 against a fixed-window baseline (mean train span length).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.evaluate import paired_drop
from egovlpv2_edge.training.tasks.checkpoint import FinetunedRun
from egovlpv2_edge.training.tasks.metrics import mir_map, mir_ndcg, percent, qa_outcomes, recall_hits

log = logging.getLogger(__name__)

__all__ = ["EvalTable", "answer_prior", "evaluate_nlq", "evaluate_qa", "evaluate_retrieval", "retrieval_metrics"]


@dataclass
class EvalTable:
    """Rows (model and baselines) of metrics, in percent."""

    task: str
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    paired: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # baseline -> metric -> (d, 95%)

    def add(self, name: str, metrics: dict[str, float]) -> None:
        """Append a row."""
        self.rows.append((name, dict(metrics)))

    def format(self) -> str:
        """A fixed-width table: one row per model or baseline, one column per metric."""
        cols = list(dict.fromkeys(k for _, m in self.rows for k in m))
        width = max([len(n) for n, _ in self.rows] + [10])
        head = f"{'':{width}s} " + " ".join(f"{c:>14s}" for c in cols)
        lines = [f"{self.task}", head]
        for name, m in self.rows:
            lines.append(f"{name:{width}s} " + " ".join(f"{m[c]:14.1f}" if c in m else f"{'-':>14s}" for c in cols))
        return "\n".join(lines + self.notes)

    def to_json(self) -> dict:
        """JSON-ready dict."""
        return {"task": self.task, "rows": {n: m for n, m in self.rows}, "notes": self.notes,
                "paired": {b: {m: list(v) for m, v in d.items()} for b, d in self.paired.items()}}  # fmt: skip

    def add_paired(self, title: str, model: dict[str, np.ndarray], others: dict[str, dict[str, np.ndarray]]) -> None:
        """The model minus each baseline per metric, from per-item 0/1 outcomes on the same items, with the
        paired 95% half-width (:func:`~egovlpv2_edge.training.evaluate.paired_drop`), as notes and in the JSON."""
        self.notes.append(title)
        for other, hits in others.items():
            diffs = {m: paired_drop(model[m], hits[m]) for m in model if m in hits}
            self.paired[other] = diffs
            self.notes.append(f"  - {other}: " + "; ".join(f"{m} {d:+.1f} +- {w:.1f}" for m, (d, w) in diffs.items()))


# ----- QA ----------------------------------------------------------------------------------------------------
def answer_prior(train_answers: Sequence[int], train_types: Sequence[str]) -> dict[str, int]:
    """Most frequent train answer per question type (ties: the smaller answer index)."""
    by_type: dict[str, Counter] = {}
    for a, t in zip(train_answers, train_types, strict=True):
        by_type.setdefault(t, Counter())[a] += 1
    return {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in by_type.items()}


def _qa_loader(run: FinetunedRun, data: Path, split: str, limit: int | None) -> DataLoader:
    from egovlpv2_edge.training.data.qa import QADataset, collate_qa, read_qa
    from egovlpv2_edge.training.tasks._setup import ensure_task_files, read_meta
    from egovlpv2_edge.training.tasks.qa import load_workers

    qa = read_qa(ensure_task_files(data, "qa.json"))
    v = run.model.cfg.video
    ds = QADataset(qa, data / "videos", split, v.num_frames, v.img_size, "eval", read_meta(data))
    if limit:
        ds.items = ds.items[:limit]
    return DataLoader(ds, batch_size=16, collate_fn=collate_qa, num_workers=load_workers())


def qa_run_to(run: FinetunedRun, device: torch.device) -> FinetunedRun:
    """The QA run with its backbone and fused head on ``device`` (the gates-off head reads CPU features)."""
    run.model.to(device)
    if run.head is not None:
        run.head.to(device)
    return run


@torch.no_grad()
def _qa_pass(run: FinetunedRun, loader: DataLoader, length: int, shuffle: bool, mc: bool = False) -> dict[str, list]:
    """One pass over a QA split: the head's predictions, answers, types and multiple-choice picks."""
    from egovlpv2_edge.training.evaluate import _shuffle_frames
    from egovlpv2_edge.training.tasks.qa import QATask

    task = QATask(run.model, run.vocab["answers"], run.mode or "fusion", mc_weight=0.0)
    task.head = run.head
    task.eval()
    gen = torch.Generator().manual_seed(0)
    out: dict[str, list] = {"pred": [], "answer": [], "type": [], "mc_vtm": [], "mc_head": [], "mc_gold": [],
                            "mc_n": []}  # fmt: skip
    index = {a: i for i, a in enumerate(run.vocab["answers"])}
    device = next(run.model.parameters()).device
    for b in loader:
        video = torch.stack([_shuffle_frames(x, gen) for x in b["video"]]) if shuffle else b["video"]
        tok = run.tokenizer.encode(b["question"], max_length=length)
        ids, mask = torch.from_numpy(tok.input_ids).to(device), torch.from_numpy(tok.attention_mask).to(device)
        video = video.to(device)
        out["answer"] += b["answer"].tolist()
        out["type"] += b["type"]
        logits = task.logits(video, ids, mask).cpu()
        out["pred"] += logits.argmax(-1).tolist()
        if not mc:
            continue
        for k, (q, ch, gold) in enumerate(zip(b["question"], b["choices"], b["answer_choice"].tolist(), strict=True)):
            if not ch:
                continue
            out["mc_gold"].append(gold)
            out["mc_n"].append(len(ch))
            cand = [index[c] for c in ch]
            out["mc_head"].append(int(torch.argmax(logits[k, cand])))
            out["mc_vtm"].append(int(torch.argmax(task.vtm_choice_scores(video[k], q, ch, run.tokenizer, length))))
    return out


def _probe(train_x: torch.Tensor, train_y: torch.Tensor, n_answers: int, dropout: float, epochs: int,
           seed: int = 0) -> torch.nn.Module:  # fmt: skip
    """A fresh QA head fitted on cached features (:func:`~egovlpv2_edge.training.tasks.heads.fit_qa_head`)."""
    from egovlpv2_edge.training.tasks.heads import QAHead, fit_qa_head

    torch.manual_seed(seed)
    head = QAHead(train_x.shape[1], n_answers, dropout)
    fit_qa_head(head, train_x, train_y, epochs, seed=seed)
    return head.eval()


def evaluate_qa(run: FinetunedRun, data: str | Path, split: str = "test", shuffle_frames: bool = False,
                probe_epochs: int = 30, limit: int | None = None) -> EvalTable:  # fmt: skip
    """QA accuracy of a fine-tuned checkpoint against the answer prior and the dual-feature head.

    Args:
        run: The loaded QA checkpoint.
        data: Dataset root with ``qa.json``.
        split: Split to evaluate.
        shuffle_frames: Also evaluate with each clip's frames shuffled (order questions should suffer).
        probe_epochs: Epochs of the dual-feature head (0 skips that baseline).
        limit: Use only the first N items of each split.
    """
    from egovlpv2_edge.training.tasks.qa import qa_feature_set

    data = Path(data)
    length = int(run.params.get("text_length", run.model.cfg.text.max_length))
    test, train = _qa_loader(run, data, split, limit), _qa_loader(run, data, "train", limit)
    res = _qa_pass(run, test, length, shuffle=False, mc=True)
    table = EvalTable(f"QA ({split}, {len(res['answer'])} questions, {len(run.vocab['answers'])} answers)")
    compared: dict[str, dict[str, np.ndarray]] = {}  # baseline -> per-question outcomes, for the paired intervals

    def add(row: str, pred: Sequence[int], out: dict[str, list], baseline: str | None = None) -> dict:
        hits = qa_outcomes(pred, out["answer"], out["type"])
        table.add(row, percent(hits))
        if baseline is not None:
            compared[baseline] = hits
        return hits

    model_hits = add(f"model ({run.mode} head)", res["pred"], res)
    if shuffle_frames:
        shuf = _qa_pass(run, test, length, shuffle=True)
        add("model, shuffled frames", shuf["pred"], shuf, "the model with shuffled frames")
    train_items = train.dataset.items
    index = {a: i for i, a in enumerate(run.vocab["answers"])}
    prior = answer_prior([index[q.answer] for q in train_items], [q.type for q in train_items])
    fallback = Counter(index[q.answer] for q in train_items).most_common(1)[0][0]
    add("answer prior (per type)", [prior.get(t, fallback) for t in res["type"]], res, "answer prior")
    if probe_epochs > 0:
        x_train = qa_feature_set(run.model, run.tokenizer, train.dataset, length, "dual")
        y_train = torch.tensor([train.dataset.fields(i)["answer"] for i in range(len(train.dataset))])
        head = _probe(x_train, y_train, len(index), run.head.dropout, probe_epochs)
        with torch.no_grad():
            pred = head(qa_feature_set(run.model, run.tokenizer, test.dataset, length, "dual")).argmax(-1).tolist()
        add("same head on dual features", pred, res, "same head on dual features")
    mc_dual: list[int] = []
    if run.dual_head is not None:  # the gates-off head a package answers with (dual embeddings, device length)
        x_test = qa_feature_set(run.model, run.tokenizer, test.dataset, run.model.cfg.text.max_length, "embedding")
        with torch.no_grad():
            logits = run.dual_head(x_test)
        add("gates-off head (dual embeddings)", logits.argmax(-1).tolist(), res, "gates-off head")
        for k, q in enumerate(test.dataset.items):  # the same head restricted to a question's choices
            if q.choices:
                mc_dual.append(int(torch.argmax(logits[k, [index[c] for c in q.choices]])))
    if res["mc_gold"]:
        heads = [("VTM score", "mc_vtm"), ("head", "mc_head")] + ([("gates-off head", "mc_dual")] if mc_dual else [])
        res["mc_dual"] = mc_dual
        for name, key in heads:
            table.add(f"multiple choice: {name}", {"all": 100.0 * float(np.mean(np.equal(res[key], res["mc_gold"])))})
        table.add("multiple choice: chance", {"all": 100.0 * float(np.mean(1.0 / np.asarray(res["mc_n"])))})
    table.notes.append("dual-feature head: the same QA head trained here on frozen [video CLS; text] features of "
                       "the same backbone with the gates off")  # fmt: skip
    if run.dual_head is not None:
        table.notes.append("gates-off head: the checkpoint's head on [video embedding; text embedding] (the package's "
                           "heads/qa_dual.json), questions at the text graph's length")  # fmt: skip
    table.add_paired("model head minus each baseline, points (95% interval from the per-question differences):",
                     model_hits, compared)  # fmt: skip
    return table


# ----- retrieval ---------------------------------------------------------------------------------------------
@torch.no_grad()
def retrieval_metrics(model: EgoVLPv2, tokenizer: Tokenizer, data: str | Path, split: str = "test",
                      batch_size: int = 16, random_seed: int | None = None) -> dict[str, float]:  # fmt: skip
    """EK-100 MIR mAP and nDCG (percent), text-to-video, video-to-text and their mean, over a split's clips.

    ``random_seed`` replaces the model's similarities with random scores (the chance row).
    """
    from egovlpv2_edge.training.data.dataset import EgoClipDataset
    from egovlpv2_edge.training.evaluate import _collate_eval
    from egovlpv2_edge.training.tasks.metrics import relevancy_matrix

    model.eval()
    root = Path(data)
    v = model.cfg.video
    ds = EgoClipDataset(root / "egoclip.csv", root / "videos", v.num_frames, v.img_size, split=split, mode="eval")
    rel = relevancy_matrix([r.tag_verb for r in ds.records], [r.tag_noun for r in ds.records])  # texts x clips
    if random_seed is not None:
        sim = np.random.default_rng(random_seed).random(rel.shape)
    else:
        loader = DataLoader(ds, batch_size, collate_fn=_collate_eval)
        V = torch.cat([model.encode_video(frames, normalize=True) for frames, _ in loader])  # (clips, E)
        tok = tokenizer.encode([r.clip_text for r in ds.records], max_length=model.cfg.text.max_length)
        T = model.encode_text(torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask), normalize=True)
        sim = (T @ V.T).numpy()
    out = {"mAP t2v": mir_map(sim, rel), "mAP v2t": mir_map(sim.T, rel.T),
           "nDCG t2v": mir_ndcg(sim, rel), "nDCG v2t": mir_ndcg(sim.T, rel.T)}  # fmt: skip
    out["mAP avg"] = (out["mAP t2v"] + out["mAP v2t"]) / 2
    out["nDCG avg"] = (out["nDCG t2v"] + out["nDCG v2t"]) / 2
    return {k: 100.0 * v for k, v in out.items()}


def evaluate_retrieval(run: FinetunedRun, data: str | Path, split: str = "test", baseline: str | Path | None = None
                       ) -> EvalTable:  # fmt: skip
    """Fine-tuned retrieval against the pre-trained zero-shot model (on the fine-tuned model's frames per clip) and
    random scores."""
    from egovlpv2_edge.training.tasks.checkpoint import load_backbone

    table = EvalTable(f"retrieval, EK-100 MIR metrics ({split} split)")
    table.add("fine-tuned (dual)", retrieval_metrics(run.model, run.tokenizer, data, split))
    base = baseline or run.run_config.get("init") or None
    if base and Path(base).is_file():
        model, tok = load_backbone(base, num_frames=run.model.cfg.video.num_frames)
        table.add("pre-trained, zero-shot", retrieval_metrics(model, tok, data, split))
    else:
        table.notes.append("no pre-trained checkpoint found for the zero-shot row (pass --baseline)")
    table.add("random scores", retrieval_metrics(run.model, run.tokenizer, data, split, random_seed=0))
    return table


# ----- NLQ ---------------------------------------------------------------------------------------------------
def _top_windows(sim: torch.Tensor, window_s: float, duration: float, k: int = 5) -> np.ndarray:
    """The ``k`` windows most similar to the query in dual mode (a zero-shot localiser), best first."""
    order = torch.argsort(sim, descending=True)[:k].tolist()
    return np.asarray([[i * window_s, min((i + 1) * window_s, duration)] for i in order], dtype=np.float64)


@torch.no_grad()
def evaluate_nlq(run: FinetunedRun, annotations: str | Path, video_root: str | Path, chunk_seconds: float = 600.0,
                 fps: float | None = None, max_queries: int = 0) -> EvalTable:  # fmt: skip
    """R@1/R@5 at IoU 0.3/0.5 of the span head against the fixed-window baseline."""
    from egovlpv2_edge.training.data.nlq import read_nlq
    from egovlpv2_edge.training.data.video import ChunkedVideoStore
    from egovlpv2_edge.training.tasks.nlq import decode_spans, extract_features, fixed_window_baseline

    if run.head is None:
        raise ValueError("this checkpoint carries no span head; fine-tune one with `egovlp train finetune --task nlq`")
    window = float(run.params.get("window_s", 2.0))
    clips = read_nlq(annotations)
    store = ChunkedVideoStore(video_root, chunk_seconds, fps)
    config = run.head.config()
    fused = bool(config.get("in_dim", 1))  # a head without per-window features needs no fused pass
    feats = extract_features(run.model, run.tokenizer, store, clips, window, max_queries, fused=fused)
    if not feats:
        raise ValueError(f"{annotations} has no usable query")
    longest = int(run.params.get("max_windows", 0))  # 0 (older checkpoints): spans of any length

    def ranked(head: torch.nn.Module) -> list[np.ndarray]:
        preds = []
        for f in feats:
            valid = torch.ones(1, len(f.features), dtype=torch.bool)  # a head built without the query ignores it
            start, end = head(f.features[None], valid, f.text[None], f.text_mask[None], f.sim[None])
            preds.append(decode_spans(start[0], end[0], window, f.duration, k=5, max_windows=longest))
        return preds

    gts = np.asarray([f.gt for f in feats])
    length = float(run.params.get("mean_train_span_s") or (gts[:, 1] - gts[:, 0]).mean())
    table = EvalTable(f"NLQ ({len(feats)} queries, {window:g}-s windows, spans of at most {longest or 'any'} windows)")
    reads = [w for w, on in (("fused features", fused), ("query", config.get("text_dim")),
                             ("similarity", config.get("use_sim"))) if on]  # fmt: skip
    rows = {f"span head ({' + '.join(reads)})": ranked(run.head)}
    if config.get("sim_prior"):
        from egovlpv2_edge.training.tasks.heads import build_head

        untrained = build_head(config).eval()  # the same head before training: the similarity prior alone
        rows["the head untrained (similarity prior)"] = ranked(untrained)
    rows[f"fixed {length:.1f}-s windows"] = [fixed_window_baseline(f.duration, length) for f in feats]
    rows["dual similarity, top 5 windows"] = [_top_windows(f.sim, window, f.duration) for f in feats]
    hits = {name: recall_hits(preds, gts) for name, preds in rows.items()}
    for name, h in hits.items():
        table.add(name, percent(h))
    head, *others = hits
    table.add_paired("span head minus each baseline, points (95% interval from the per-query differences):",
                     hits[head], {o: hits[o] for o in others})  # fmt: skip
    return table

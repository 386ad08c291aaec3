"""The demo's accuracy stage: every model stage measured the same way, through its package's ONNX graphs.

For the teacher (QA-tuned, FP32), the distilled student (FP32) and the quantized student (each graph at its chosen
precision), on held-out data:

* EgoMCQ inter/intra accuracy with dual (cosine, gates off), fusion (VTM, gates on) and ensemble scoring;
* QA multiple choice: each choice scored by the fused VTM head on "question choice" over the question's window,
  and by the gates-off QA head restricted to the choices;
* QA without choices: the package's QA head (the fused graph's ``qa_logits``) on the question over its window,
  top answer of the ``"qa"`` vocabulary against the truth (the teacher's fine-tuned head, the students' distilled
  one), and the package's gates-off QA head (``heads/qa_dual.json``) on the clip's and the question's dual
  embeddings;
* text-to-video R@1/5/10 over the test clips (gates off);
* clip-encoding latency (ms per clip at batch 1 and 8, ONNX Runtime CPU).

The QA-tuned teacher's head is also measured in PyTorch (``training.tasks.evaluate.evaluate_qa``, with its answer
prior and per-type rows) beside the ONNX numbers. Decoded clips are cached per (frames, size) and shared by the
models that read the same input.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = {"teacher": "teacher_fp32", "student": "student_fp32", "student_int8": "student_edge"}
SCORINGS = ("dual", "fusion", "ensemble")


def _mcq_items(data: Path, frames: int, size: int, limit: int) -> list[dict[str, Any]]:
    from egovlpv2_edge.training.data.dataset import EgoMCQDataset

    ds = EgoMCQDataset(data / "egomcq.json", data / "videos", frames, size)
    return [_numpy(ds[i]) for i in range(min(limit, len(ds)))]


def _qa_items(data: Path, frames: int, size: int, limit: int) -> list[dict[str, Any]]:
    from egovlpv2_edge.training.data.qa import QADataset, read_qa
    from egovlpv2_edge.training.tasks._setup import ensure_task_files, read_meta

    ds = QADataset(read_qa(ensure_task_files(data, "qa.json")), data / "videos", "test", frames, size, "eval",
                   read_meta(data))  # fmt: skip
    items = [_numpy(ds[i]) | {"answer_text": ds.items[i].answer} for i in range(len(ds)) if ds.items[i].choices]
    return items[:limit]


def _test_clips(data: Path, frames: int, size: int) -> list[dict[str, Any]]:
    from egovlpv2_edge.training.data.dataset import EgoClipDataset

    ds = EgoClipDataset(data / "egoclip.csv", data / "videos", frames, size, split="test", mode="eval")
    return [_numpy(ds[i]) for i in range(len(ds))]


def _numpy(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in item.items()}


def egomcq(encoder: Any, items: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """EgoMCQ accuracy (percent) per scoring and question type."""
    hits = {s: {"inter": 0, "intra": 0} for s in SCORINGS}
    counts = {"inter": 0, "intra": 0}
    for it in items:
        kind = "inter" if it["types"] == 1 else "intra"
        counts[kind] += 1
        clips = encoder.encode_clips(it["video"])  # (5, F, 3, H, W) candidates
        dual = clips.embeddings @ encoder.encode_texts([it["text"]])[0]
        fusion = encoder.match(clips.tokens, it["text"])
        for scoring, scores in (("dual", dual), ("fusion", fusion), ("ensemble", dual + fusion)):
            hits[scoring][kind] += int(np.argmax(scores) == it["answer"])
    return {s: {k: 100.0 * hits[s][k] / max(counts[k], 1) for k in counts} for s in SCORINGS} | {"counts": counts}


def qa_multiple_choice(encoder: Any, items: list[dict[str, Any]]) -> dict[str, float]:
    """Percent of QA questions whose right choice gets the highest VTM match over the question's window."""
    from egovlpv2_edge.training.tasks.qa import choice_texts

    right = []
    for it in items:
        tokens = encoder.encode_clips(it["video"][None]).tokens  # (1, T, Dv)
        probs = [float(encoder.match(tokens, text)[0]) for text in choice_texts(it["question"], it["choices"])]
        right.append(int(np.argmax(probs)) == it["answer_choice"])
    chance = float(np.mean([1.0 / len(it["choices"]) for it in items])) if items else 0.0
    return {"accuracy": 100.0 * float(np.mean(right)) if right else 0.0, "chance": 100.0 * chance, "n": len(right)}


def qa_heads(encoder: Any, items: list[dict[str, Any]], vocab: list[str], fused: bool,
             dual: Any) -> dict[str, dict[str, float]]:  # fmt: skip
    """Percent of QA questions whose top answer over the question's window is the truth, per QA head the package
    has: ``fused`` (the fused graph's ``qa_logits``) and ``dual`` (the gates-off head on the dual embeddings), and
    ``dual_mc``: the gates-off head restricted to the question's choices (multiple choice)."""
    from egovlpv2_edge.graphs import QA_OUTPUT

    right: dict[str, list[bool]] = {"fused": [], "dual": [], "dual_mc": []}
    index = {a: i for i, a in enumerate(vocab)}
    for it in items:
        clip = encoder.encode_clips(it["video"][None])  # tokens (1, T, Dv), embeddings (1, E)
        if fused:
            logits = encoder.fused(clip.tokens, it["question"])[QA_OUTPUT][0]  # (A,)
            right["fused"].append(vocab[int(np.argmax(logits))] == it["answer_text"])
        if dual is not None:
            logits = dual.logits(clip.embeddings, encoder.encode_texts([it["question"]])[0])[0]  # (A,)
            right["dual"].append(vocab[int(np.argmax(logits))] == it["answer_text"])
            if it["choices"] and all(c in index for c in it["choices"]):  # restricted to the choices, as ask does
                pick = int(np.argmax(logits[[index[c] for c in it["choices"]]]))
                right["dual_mc"].append(pick == it["answer_choice"])
    return {k: {"accuracy": 100.0 * float(np.mean(r)) if r else 0.0, "n": len(r)} for k, r in right.items() if r}


def recall(encoder: Any, clips: list[dict[str, Any]]) -> dict[str, float]:
    """Text-to-video R@1/5/10 (percent) over the test clips; a hit is the narration's own clip."""
    V = np.concatenate([encoder.encode_clips(np.stack([c["video"] for c in clips[i : i + 8]])).embeddings
                        for i in range(0, len(clips), 8)])  # fmt: skip
    T = encoder.encode_texts([c["text"] for c in clips])
    sim = T @ V.T  # (N texts, N clips)
    diag = np.diag(sim)[:, None]
    ranks = (sim > diag).sum(1)
    return {f"R@{k}": 100.0 * float((ranks < k).mean()) for k in (1, 5, 10)} | {"clips": len(clips)}


def clip_latency(encoder: Any, frames: np.ndarray, repeats: int = 15) -> dict[str, float]:
    """Median ms per clip of ``encode_clips`` at batch 1 and batch 8."""
    out = {}
    for b in (1, 8):
        batch = np.repeat(frames[:1], b, axis=0)
        encoder.encode_clips(batch)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            encoder.encode_clips(batch)
            times.append(time.perf_counter() - t0)
        out[f"batch{b}_ms_per_clip"] = 1e3 * float(np.median(times)) / b
    return out


@functools.lru_cache(maxsize=4)  # the FP32 and the quantized student share one configuration
def _model_counts(cfg: Any) -> dict[str, float]:
    """Parameters (millions) and GMACs of one dual-mode clip encoding of the packaged model's configuration."""
    from egovlpv2_edge.model import EgoVLPv2
    from egovlpv2_edge.model.stats import count_macs, count_params

    model = EgoVLPv2(cfg).eval()
    return {"params_m": count_params(model)["total"] / 1e6, "gmacs_per_clip": count_macs(model)["dual_clip"]}


def _package_eval(path: Path, data: Path, limit: int, cache: dict[tuple[int, int], dict[str, list]]) -> dict:
    from egovlpv2_edge.package import open_package
    from egovlpv2_edge.runtime.encoder import PackageEncoder

    package = open_package(path)
    encoder = PackageEncoder(package, threads=2)
    pre = package.preprocessing
    key = (pre.frames_per_clip, pre.img_size)
    if key not in cache:
        cache[key] = {"mcq": _mcq_items(data, *key, limit), "qa": _qa_items(data, *key, limit),
                      "clips": _test_clips(data, *key)}  # fmt: skip
    c = cache[key]
    selected = package.graph_paths
    dual = package.dual_qa_head()
    has_fused = bool(package.manifest.qa_answers())
    heads = qa_heads(encoder, c["qa"], package.answer_vocab("qa"), has_fused, dual) if has_fused or dual else {}
    return {
        "package": str(path),
        "precision": {g: e.selected for g, e in package.manifest.graphs.items()},
        "graph_bytes": int(sum(Path(p).stat().st_size for p in selected.values())),
        **_model_counts(package.config),
        "egomcq": egomcq(encoder, c["mcq"]),
        "qa_mc": qa_multiple_choice(encoder, c["qa"]),
        "qa_head": heads.get("fused"),
        "qa_dual": heads.get("dual"),
        "qa_dual_mc": heads.get("dual_mc"),
        "recall": recall(encoder, c["clips"]),
        "latency": clip_latency(encoder, c["mcq"][0]["video"]),
    }


def _teacher_qa_head(demo: Any) -> dict[str, Any]:
    from egovlpv2_edge.training.tasks.checkpoint import load_finetuned
    from egovlpv2_edge.training.tasks.evaluate import evaluate_qa

    run = load_finetuned(demo.path("qa") / "finetuned.pt", "qa")
    table = evaluate_qa(run, demo.path("data"), "test", probe_epochs=0, limit=demo.eval_limit)
    return {"task": table.task, "rows": dict(table.rows)}


def stage_evaluate(demo: Any) -> None:
    """Measure every stage (teacher / student / quantized student) the same way; writes ``eval.json``."""
    cache: dict[tuple[int, int], dict[str, list]] = {}
    results = {
        name: _package_eval(demo.path("packages") / pkg, demo.path("data"), demo.eval_limit, cache)
        for name, pkg in PACKAGES.items()
    }
    results["teacher_qa_head"] = _teacher_qa_head(demo)
    demo.path("eval.json").write_text(json.dumps(results, indent=2))

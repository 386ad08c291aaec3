"""The demo's device side: index held-out clips through the package's ONNX graphs, answer queries, report.

Search runs with the gates off (cached clip embeddings against a cached text embedding); the top hits are then
re-ranked with the gates on, running only the fused top layers over the clips' cached tokens.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

QUERY_COUNT = 4
TOP_K = 10
SHOW = 3


def _test_clips(data: Path) -> list[Any]:
    from egovlpv2_edge.training.data.egoclip import read_egoclip

    meta = json.loads((data / "meta.json").read_text())
    keep = set(meta["splits"]["test"]["clip_idx"])
    return [r for r in read_egoclip(data / "egoclip.csv") if r.clip_idx in keep]


def _clip_frames(store: Any, rec: Any, pre: Any) -> tuple[np.ndarray, bytes]:
    import cv2

    from egovlpv2_edge.preprocess import eval_transform
    from egovlpv2_edge.training.data.video import sample_times

    frames = store.read_frames(rec.video_uid, sample_times(rec.clip_start, rec.clip_end, pre.frames_per_clip))
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frames[len(frames) // 2], cv2.COLOR_RGB2BGR))
    return eval_transform(frames, pre.img_size, pre.mean, pre.std), jpg.tobytes()


def _index_clips(demo: Any, encoder: Any, index: Any) -> dict[str, float]:
    from egovlpv2_edge.training.data.video import ChunkedVideoStore

    pre = encoder.package.preprocessing
    store = ChunkedVideoStore(
        demo.data / "videos", chunk_seconds=json.loads((demo.data / "meta.json").read_text())["chunk_seconds"]
    )
    clips = _test_clips(demo.data)
    t_prep = t_enc = 0.0
    for start in range(0, len(clips), 8):
        batch = clips[start : start + 8]
        t0 = time.perf_counter()
        prepared = [_clip_frames(store, r, pre) for r in batch]
        t1 = time.perf_counter()
        enc = encoder.encode_clips(np.stack([p[0] for p in prepared]))
        t2 = time.perf_counter()
        t_prep, t_enc = t_prep + t1 - t0, t_enc + t2 - t1
        index.add(
            enc.embeddings,
            [r.clip_start for r in batch],
            [r.clip_end for r in batch],
            [r.video_uid for r in batch],
            thumbnail=[p[1] for p in prepared],
            extra=[{"text": r.clip_text} for r in batch],
            tokens=list(enc.tokens.astype(np.float16)),
        )
    n = len(clips)
    return {"clips": n, "decode_ms_per_clip": 1e3 * t_prep / n, "encode_ms_per_clip": 1e3 * t_enc / n}


def _pick_queries(data: Path, n: int) -> list[str]:
    counts: dict[str, int] = {}
    for r in _test_clips(data):
        counts[r.clip_text] = counts.get(r.clip_text, 0) + 1
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return ranked[:n]


def _answer(encoder: Any, index: Any, query: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    hits = index.search(encoder.encode_texts([query])[0], k=TOP_K)[0]
    t1 = time.perf_counter()
    tokens = index.get_tokens([h.id for h in hits])
    probs = encoder.match(np.stack([tokens[h.id].astype(np.float32) for h in hits]), query)
    t2 = time.perf_counter()
    reranked = sorted(zip(hits, probs, strict=True), key=lambda hp: -(hp[0].score + float(hp[1])))
    return {
        "query": query,
        "search_ms": 1e3 * (t1 - t0),
        "rerank_ms": 1e3 * (t2 - t1),
        "dual_top1_correct": hits[0].extra["text"] == query,
        "fused_top1_correct": reranked[0][0].extra["text"] == query,
        "moments": [
            {
                "id": h.id,
                "video": h.source,
                "start": h.start,
                "end": h.end,
                "cosine": h.score,
                "vtm": float(p),
                "text": h.extra["text"],
                "thumbnail": h.thumbnail,
            }
            for h, p in reranked[:SHOW]
        ],
    }


def stage_runtime(demo: Any) -> None:
    """Index the held-out clips on the 'device' and answer sample queries; writes runtime.json and a picture."""
    from egovlpv2_edge.package import open_package
    from egovlpv2_edge.runtime.encoder import PackageEncoder
    from egovlpv2_edge.runtime.index import ClipIndex

    package = open_package(demo.out / "package" / "egovlpv2_small_teacher.egopkg")
    encoder = PackageEncoder(package)
    shutil.rmtree(demo.out / "index", ignore_errors=True)
    emb_dim = package.config.heads.embed_dim
    with ClipIndex.open(demo.out / "index", emb_dim, max_token_clips=100_000) as index:
        stats = _index_clips(demo, encoder, index)
        answers = [_answer(encoder, index, q) for q in _pick_queries(demo.data, QUERY_COUNT)]
    _moments_picture(answers, demo.out / "retrieved_moments.png")
    latency = _graph_latency(encoder)
    for a in answers:
        for m in a["moments"]:
            m.pop("thumbnail")
    payload = {"index": stats, "answers": answers, "graph_ms": latency, "providers": encoder.providers}
    (demo.out / "runtime.json").write_text(json.dumps(payload, indent=2))


def _graph_latency(encoder: Any, repeats: int = 20) -> dict[str, float]:
    """Median ms per call of each graph at batch 1 on random inputs of the right shapes."""
    rng = np.random.default_rng(0)
    out = {}
    for name, spec in encoder.specs.items():
        feeds = {}
        for t in spec.inputs:
            shape = t.concrete(1)
            feeds[t.name] = (
                np.ones(shape, np.int64) if t.dtype == "int64" else rng.standard_normal(shape).astype(np.float32)
            )
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            encoder.sessions[name].run(None, feeds)
            times.append(time.perf_counter() - t0)
        out[name] = 1e3 * float(np.median(times))
    return out


def _moments_picture(answers: list[dict[str, Any]], path: Path) -> None:
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(answers), SHOW, figsize=(3.2 * SHOW, 3.0 * len(answers)), squeeze=False)
    for row, a in zip(axes, answers, strict=True):
        for ax, m in zip(row, a["moments"], strict=False):
            img = cv2.imdecode(np.frombuffer(m["thumbnail"], np.uint8), cv2.IMREAD_COLOR)
            ax.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            ok = m["text"] == a["query"]
            ax.set_title(f"{m['start']:.0f}-{m['end']:.0f} s  cos {m['cosine']:.2f}  vtm {m['vtm']:.2f}", fontsize=7)
            ax.set_xlabel(m["text"].replace("#C C ", ""), fontsize=7, color="green" if ok else "red")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(a["query"].replace("#C C ", ""), fontsize=8)
    fig.suptitle("retrieved moments (query on the left; green = the clip's own narration equals the query)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(demo: Any, seconds: float) -> None:
    """Print the run's report and write it to ``report.md``."""
    lines = [f"# egovlp demo report ({demo.out})", ""]
    ev = json.loads((demo.out / "eval.json").read_text())
    rt = json.loads((demo.out / "runtime.json").read_text())
    exp = json.loads((demo.out / "graphs" / "export.json").read_text())
    counts = ev["counts"]
    lines += [
        f"teacher: {demo.preset}, {demo.steps} pre-training steps of {demo.batch_size} clips (+ scene negatives)",
        "",
        f"EgoMCQ on held-out videos ({counts['inter']} inter, {counts['intra']} intra; chance 20%):",
        "| scoring | inter | intra | intra, frames shuffled |",
        "|---|---|---|---|",
    ]
    for s, acc in ev["egomcq"].items():
        shuf = ev["egomcq_shuffled"][s]["intra"]
        lines.append(f"| {s} | {acc['inter']:.1f} | {acc['intra']:.1f} | {shuf:.1f} |")
    r = ev["retrieval"]
    lines += ["", "text-to-video on the test split: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), ""]
    lines += ["| graph | max diff vs PyTorch | ORT ms (batch 1) |", "|---|---|---|"]
    lines += [f"| {g} | {exp[g]['max_abs_diff']:.1e} | {ms:.2f} |" for g, ms in rt["graph_ms"].items()]
    pkg = demo.out / "package" / "egovlpv2_small_teacher.egopkg"
    idx = rt["index"]
    lines += [
        "",
        f"package: {pkg} ({pkg.stat().st_size / 2**20:.1f} MiB, verified)",
        f"index: {idx['clips']} clips, decode {idx['decode_ms_per_clip']:.1f} ms + encode "
        f"{idx['encode_ms_per_clip']:.1f} ms per clip; providers {sorted(set(rt['providers'].values()))}",
        "",
    ]
    for a in rt["answers"]:
        top = a["moments"][0]
        lines.append(
            f'- "{a["query"]}": top {top["video"][:8]} {top["start"]:.0f}-{top["end"]:.0f} s '
            f'"{top["text"]}" (search {a["search_ms"]:.1f} ms, re-rank {a["rerank_ms"]:.1f} ms)'
        )
    p1d = np.mean([a["dual_top1_correct"] for a in rt["answers"]])
    p1f = np.mean([a["fused_top1_correct"] for a in rt["answers"]])
    lines += [
        "",
        f"query top-1 exact narration: dual {100 * p1d:.0f}%, after fused re-rank {100 * p1f:.0f}%",
        f"pictures: {demo.teacher_dir / 'curves.png'}, {demo.out / 'retrieved_moments.png'}",
        "stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in demo.timings.items()),
        f"total {seconds:.0f} s",
    ]
    text = "\n".join(lines)
    (demo.out / "report.md").write_text(text + "\n")
    print(text)

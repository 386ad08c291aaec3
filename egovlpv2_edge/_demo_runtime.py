"""The demo's device side: a "day" of first-person video streamed through the runtime SDK, then searches and questions.

``stage_stream`` stitches the held-out videos (test, then val, then train until ``--day-minutes``) into one mp4 and
streams it through ``egovlpv2_edge.open(package, source=video_file, index=...)``: capture -> frame ring -> clip
sampler -> batched ONNX Runtime encoder (the quantized student package) -> clip index, as fast as the file decodes
(lossless). The real-time factor is the video's length over the wall time.

``stage_ask`` reopens the index without a source and asks it things: ``search`` (gates off) for narrations that
occur in the day, scored against where they really occur, and ``ask`` for held-out QA questions, once with their
choices and once free-form, without choices, each answered by the head ``ask`` picks by default (the package's
gates-off QA head on the stored embeddings when it has one, restricted to the choices when there are choices; else
the fused layers: VTM on "question choice", or the graph's ``qa_logits``). No torch in this stage's code path.
``retrieved_moments.png`` shows the moments and answers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "student_edge"  # the quantized student package streamed on the "device"
QUERY_COUNT, QUESTION_COUNT, TOP_K, SHOW = 4, 4, 5, 3


def _split_videos(data: Path) -> list[str]:
    meta = json.loads((data / "meta.json").read_text())
    order: list[str] = []
    for split in ("test", "val", "train"):
        order += [v for v in meta["splits"].get(split, {}).get("video_uids", []) if v not in order]
    return order


def _copy_frames(src: Path, writer: Any, budget: int) -> int:
    import cv2

    cap, n = cv2.VideoCapture(str(src)), 0
    while n < budget:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(frame)
        n += 1
    cap.release()
    return n


def make_day_video(data: Path, out: Path, minutes: float) -> list[dict[str, Any]]:
    """Stitch whole videos (held-out first) into ``out`` up to ``minutes``; returns each piece's uid and offset."""
    import cv2

    meta = json.loads((data / "meta.json").read_text())
    fps, size = float(meta["fps"]), int(meta["size"])
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    budget, pieces, frames = int(minutes * 60 * fps), [], 0
    for uid in _split_videos(data):
        if frames >= budget:
            break
        start = frames
        for chunk in sorted((data / "videos" / uid).glob("*.mp4"), key=lambda p: int(p.stem)):
            frames += _copy_frames(chunk, writer, budget - frames)
        pieces.append({"video_uid": uid, "offset": start / fps, "duration": (frames - start) / fps})
    writer.release()
    return pieces


def stage_stream(demo: Any) -> None:
    """Stream the day video through the SDK into a fresh index; writes ``stream/stream.json``."""
    import egovlpv2_edge

    root = demo.path("stream")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    video = root / "day.mp4"
    pieces = make_day_video(demo.path("data"), video, demo.day_minutes)
    seconds = sum(p["duration"] for p in pieces)
    print(f"streaming {video} ({seconds / 60:.1f} min, {len(pieces)} videos stitched) through the SDK ...", flush=True)
    latencies: list[float] = []
    package = demo.path("packages") / PACKAGE
    with egovlpv2_edge.open(package, source=str(video), index=str(root / "index"), threads=2, max_token_clips=100_000,
                            on_clip=lambda clip: latencies.append(clip.latency_s)) as rt:  # fmt: skip
        t0 = time.perf_counter()
        rt.start()
        rt.wait()
        wall = time.perf_counter() - t0
        s = rt.stats()
    payload = {
        "video": str(video), "pieces": pieces, "video_seconds": seconds, "wall_seconds": wall,
        "realtime_factor": seconds / wall, "clips": s.index.count,
        "frames_in": s.stream.frames_in, "frames_dropped": s.stream.frames_dropped,
        "clips_dropped": s.stream.clips_dropped, "clips_per_s": len(latencies) / wall,
        "latency_ms": {k: {"p50": v.p50_ms, "p95": v.p95_ms} for k, v in s.latency.items()},
        "rss_mib": s.rss_bytes / 2**20, "providers": sorted(set(s.providers.values())), "package": str(package),
    }  # fmt: skip
    (root / "stream.json").write_text(json.dumps(payload, indent=2))


def _truth(data: Path, pieces: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(narration, start, end) of every clip inside the day video, on the day video's clock."""
    from egovlpv2_edge.training.data.egoclip import read_egoclip

    where = {p["video_uid"]: p for p in pieces}
    out = []
    for r in read_egoclip(data / "egoclip.csv"):
        p = where.get(r.video_uid)
        if p is not None and r.clip_end <= p["duration"]:
            out.append((r.clip_text, p["offset"] + r.clip_start, p["offset"] + r.clip_end))
    return out


def _overlaps(m: Any, spans: list[tuple[float, float]]) -> bool:
    return any(m.start < e and s < m.end for s, e in spans)


def _searches(rt: Any, truth: list[tuple[str, float, float]]) -> list[dict[str, Any]]:
    counts = Counter(t for t, _, _ in truth)
    queries = sorted(counts, key=lambda t: (-counts[t], t))[:QUERY_COUNT]
    out = []
    for q in queries:
        spans = [(s, e) for t, s, e in truth if t == q]
        t0 = time.perf_counter()
        moments = rt.search(q, k=TOP_K)
        ms = 1e3 * (time.perf_counter() - t0)
        hits = [_overlaps(m, spans) for m in moments]
        shown = [_moment(m, h) for m, h in zip(moments, hits, strict=True)]
        out.append({"query": q, "occurrences": len(spans), "search_ms": ms, "hit_at_1": bool(hits[:1] and hits[0]),
                    "hit_at_k": any(hits), "moments": shown})  # fmt: skip
    return out


def _moment(m: Any, hit: bool) -> dict[str, Any]:
    return {"id": m.id, "start": m.start, "end": m.end, "score": m.score, "hit": hit, "thumbnail": m.thumbnail}


def _questions(rt: Any, data: Path, pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from egovlpv2_edge.runtime.sdk import NoQAHeadError

    qa = json.loads((data / "qa.json").read_text())["items"]
    where = {p["video_uid"]: p for p in pieces}
    inside = [q for q in qa if q["choices"] and q["end"] <= where.get(q["video_uid"], {}).get("duration", -1.0)]
    picked, seen = [], set()
    for q in inside:  # one question per type first, then any
        if q["type"] not in seen:
            picked.append(q)
            seen.add(q["type"])
    picked = (picked + [q for q in inside if q not in picked])[:QUESTION_COUNT]
    out, no_head = [], None
    for q in picked:
        t0 = time.perf_counter()
        a = rt.ask(q["question"], choices=q["choices"], k=TOP_K)
        ms = 1e3 * (time.perf_counter() - t0)
        off = where[q["video_uid"]]["offset"]
        span = [(off + q["start"], off + q["end"])]
        out.append({"question": q["question"], "type": q["type"], "choices": q["choices"], "truth": q["answer"],
                    "answer": a.answer, "confidence": a.confidence, "correct": a.answer == q["answer"], "ask_ms": ms,
                    "head": a.head,
                    "moments": [_moment(m, _overlaps(m, span)) for m in a.evidence[:SHOW]]})  # fmt: skip
        if no_head is None:
            try:
                out[-1]["free"] = _free_answer(rt, q["question"], q["answer"])
            except NoQAHeadError as err:
                no_head = str(err)
    free = [r["free"] for r in out if "free" in r]
    if no_head is not None or not free:
        head = f"no QA head in the package: {no_head or 'no question asked'}"
    else:
        which = {"dual": "gates-off QA head (on the dual embeddings)", "fused": "fused QA head (qa_logits)"}
        head = (f"the package's {which.get(free[0]['head'], 'QA head')} answered {sum(f['correct'] for f in free)}/"
                f"{len(free)} right, free-form")  # fmt: skip
    return out + [{"qa_head": head}]


def _free_answer(rt: Any, question: str, truth: str) -> dict[str, Any]:
    """``ask`` without choices: the package's QA head answers from its vocabulary."""
    t0 = time.perf_counter()
    a = rt.ask(question, k=TOP_K)
    ms = 1e3 * (time.perf_counter() - t0)
    return {"answer": a.answer, "confidence": a.confidence, "correct": a.answer == truth, "ask_ms": ms,
            "top": [list(s) for s in a.scores[:3]], "head": a.head}  # fmt: skip


def stage_ask(demo: Any) -> None:
    """Searches and questions against the streamed index (no source); writes ``answers.json`` and the picture."""
    import egovlpv2_edge

    stream = json.loads(demo.path("stream/stream.json").read_text())
    truth = _truth(demo.path("data"), stream["pieces"])
    with egovlpv2_edge.open(demo.path("packages") / PACKAGE, index=str(demo.path("stream/index")), threads=2) as rt:
        searches = _searches(rt, truth)
        questions = _questions(rt, demo.path("data"), stream["pieces"])
    moments_picture(searches, questions[:-1], demo.path("retrieved_moments.png"))
    for row in searches + questions[:-1]:
        for m in row["moments"]:
            m.pop("thumbnail")
    payload = {"searches": searches, "questions": questions[:-1], "qa_head": questions[-1]["qa_head"]}
    demo.path("answers.json").write_text(json.dumps(payload, indent=2))


def _short(text: str, n: int = 60) -> str:
    text = text.replace("#C C ", "")
    return text if len(text) <= n else text[: n - 1] + "…"


def moments_picture(searches: list[dict[str, Any]], questions: list[dict[str, Any]], path: Path) -> None:
    """Contact sheet: per search and per question, its top moments (green: overlaps where it really happened)."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = searches + questions
    fig, axes = plt.subplots(max(1, len(rows)), SHOW, figsize=(3.3 * SHOW, 2.9 * max(1, len(rows))), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=False):
        for ax, m in zip(ax_row, row["moments"], strict=False):
            if m["thumbnail"]:
                img = cv2.imdecode(np.frombuffer(m["thumbnail"], np.uint8), cv2.IMREAD_COLOR)
                ax.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            ax.set_title(f"{m['start']:.0f}-{m['end']:.0f} s  score {m['score']:.2f}", fontsize=7,
                         color="green" if m["hit"] else "red")  # fmt: skip
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        if "query" in row:
            label = f"search: {_short(row['query'], 34)}"
        else:
            mark = "right" if row["correct"] else f"wrong, truth: {row['truth']}"
            label = f"ask: {_short(row['question'], 34)}\n-> {row['answer']} ({mark})"
        ax_row[0].set_ylabel(label, fontsize=7)
    fig.suptitle("retrieved moments of the streamed day (green: overlaps where it really happened)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=100)
    plt.close(fig)

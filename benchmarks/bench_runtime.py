"""On-device runtime speed on this machine: streaming a first-person video, search at 100k clips, ask.

    python benchmarks/bench_runtime.py [--package PKG] [--video VIDEO.mp4] [--clips 100000] [--queries 200]

Prints a table with

* processing a video as fast as possible (decode, clip sampling, preprocessing, encoding, index writes) as a
  share of the video's duration (below 100% = faster than real time);
* ``search`` latency p50/p95 over ``--clips`` stored clips (exact cosine top-10 over the fp16 vector file, with
  SQLite metadata), beside faiss-cpu's ``IndexFlatIP`` on the same vectors ("not installed" without faiss);
* ``ask`` latency p95 with the fused layers over 5 clips' cached tokens and 3 choices (texts not cached), and
  without choices by each QA head the package has: the fused graph's ``qa_logits`` over cached tokens and the
  gates-off head over the clips' stored embeddings;
* the peak resident memory of the streaming process: the stream runs in a fresh interpreter that imports only the
  runtime (as on the device), so its peak is the runtime's own (package sessions, decoder, queues, index), and the
  row says whether PyTorch was imported there.

Without ``--package`` a package of the tiny ``egovlpv2_test`` preset is exported (needs torch); without
``--video`` a synthetic first-person video is rendered (``egovlp data synth``, one video).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.runtime._package builds the default package


def default_package(work: Path) -> Path:
    from tests.runtime._package import build_test_package, export_test_graphs

    export_test_graphs(work)
    return build_test_package(work, work / "package" / "egovlpv2_test")


def default_video(work: Path, actions: int) -> Path:
    from egovlpv2_edge.training.data.synth import SynthConfig, generate_dataset

    cfg = SynthConfig(videos=1, min_actions=actions, max_actions=actions, workers=1)
    generate_dataset(work / "synth", cfg)
    return next((work / "synth" / "videos").rglob("*.mp4"))


def stream_share(package: Path, video: Path, index: Path) -> tuple[float, float, int, dict]:
    """(video seconds, processing seconds, clips, latency summary) of indexing ``video`` as fast as possible."""
    import cv2

    import egovlpv2_edge

    cap = cv2.VideoCapture(str(video))
    duration = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    with egovlpv2_edge.open(package, video, index, realtime=False) as rt:
        t0 = time.perf_counter()
        rt.start()
        rt.wait()
        seconds = time.perf_counter() - t0
        stats = rt.stats()
    return duration, seconds, stats.stream.clips_indexed, stats.latency


def _stream_child(package: Path, video: Path, index: Path, out: Any) -> None:
    """:func:`stream_share` in a fresh interpreter; sends back its result, peak RSS (bytes) and whether torch loaded."""
    from egovlpv2_edge.runtime._metrics import peak_rss_bytes

    result = stream_share(package, video, index)
    out.send((result, peak_rss_bytes(), "torch" in sys.modules))
    out.close()


def stream_in_fresh_process(
    package: Path, video: Path, index: Path
) -> tuple[tuple[float, float, int, dict], int, bool]:
    """(:func:`stream_share`'s result, the streaming process's peak RSS in bytes, whether it imported torch)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing this process imported (torch) is in it
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_stream_child, args=(package, video, index, send))
    child.start()
    send.close()
    try:
        got = recv.recv()
    except EOFError:
        got = None
    child.join()
    if got is None or child.exitcode != 0:
        raise RuntimeError(f"the streaming process failed (exit code {child.exitcode}); run it alone to see why")
    return got


def search_latency(dim: int, clips: int, queries: int, work: Path) -> tuple[list[float], list[float] | None]:
    """Per-query seconds of ClipIndex.search and of faiss IndexFlatIP (None without faiss), top-10."""
    from egovlpv2_edge.runtime.index import ClipIndex

    rng = np.random.default_rng(0)
    q = rng.standard_normal((queries, dim)).astype(np.float32)
    vectors = rng.standard_normal((clips, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with ClipIndex.open(work / "search_ix", dim) as ix:
        for s in range(0, clips, 10_000):
            n = min(10_000, clips - s)
            ix.add(vectors[s : s + n], np.arange(s, s + n) * 1.0, np.arange(s, s + n) + 2.0, "cam0")
        ix.search(q[0], k=10)  # warm the memory map
        ours = []
        for row in q:
            t0 = time.perf_counter()
            ix.search(row, k=10)
            ours.append(time.perf_counter() - t0)
    vectors = vectors.astype(np.float16).astype(np.float32)  # what the index stores (fp16)
    try:
        import faiss
    except ImportError:
        return ours, None
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    theirs = []
    for row in qn:
        t0 = time.perf_counter()
        flat.search(row[None], 10)
        theirs.append(time.perf_counter() - t0)
    return ours, theirs


def ask_latency(package: Path, index: Path, repeats: int) -> tuple[list[float], dict[str, list[float] | None]]:
    """Per-call seconds of ask over 5 clips: with 3 choices, and free-form by each QA head (``fused``, ``dual``;
    None for a head the package does not have).

    Every question is new (no text cache hits).
    """
    import egovlpv2_edge
    from egovlpv2_edge.runtime.sdk import NoQAHeadError

    with egovlpv2_edge.open(package, index=index) as rt:
        rt.ask("what did C pick up first?", ["the cup", "the box", "the bowl"], k=5)  # warm-up
        choices = []
        for i in range(repeats):
            t0 = time.perf_counter()
            rt.ask(f"what did C pick up {i}?", [f"the cup {i}", f"the box {i}", f"the bowl {i}"], k=5)
            choices.append(time.perf_counter() - t0)
        free: dict[str, list[float] | None] = {}
        for head in ("fused", "dual"):
            try:
                rt.ask("what did C open first?", k=5, head=head)  # warm-up
            except NoQAHeadError:
                free[head] = None
                continue
            free[head] = []
            for i in range(repeats):
                t0 = time.perf_counter()
                rt.ask(f"what did C open {i} ({head})?", k=5, head=head)
                free[head].append(time.perf_counter() - t0)  # type: ignore[union-attr]
    return choices, free


def _ms(times: list[float], pct: float) -> str:
    return f"{1e3 * float(np.percentile(times, pct)):.2f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", type=Path, default=None, help="model package (default: export the test preset)")
    p.add_argument("--video", type=Path, default=None, help="video file (default: render a synthetic one)")
    p.add_argument("--actions", type=int, default=20, help="actions in the rendered video (default %(default)s)")
    p.add_argument("--clips", type=int, default=100_000, help="stored clips for search (default %(default)s)")
    p.add_argument("--queries", type=int, default=200, help="search queries timed (default %(default)s)")
    p.add_argument("--asks", type=int, default=30, help="ask calls timed (default %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the tiny preset truncates the timed questions; that is expected
    with tempfile.TemporaryDirectory(prefix="bench_runtime_") as tmp:
        work = Path(tmp)
        package = args.package or default_package(work)
        video = args.video or default_video(work, args.actions)
        (duration, seconds, clips, latency), peak, torch_loaded = stream_in_fresh_process(
            package, video, work / "stream_ix"
        )
        from egovlpv2_edge.package import open_package

        dim = open_package(package).config.heads.embed_dim
        ours, theirs = search_latency(dim, args.clips, args.queries, work)
        asks, free_asks = ask_latency(package, work / "stream_ix", args.asks)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"\nruntime benchmark on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={threads}; package {package.name}, video {video.name}")  # fmt: skip
    rows = [
        ("stream a video as fast as possible", f"{100 * seconds / duration:.1f}% of its duration",
         f"{duration:.0f} s video, {clips} clips in {seconds:.1f} s"),
        ("  encode per batch (p50 / p95)", f"{latency['encode'].p50_ms:.1f} / {latency['encode'].p95_ms:.1f} ms", ""),
        ("  peak memory of the streaming process", f"{peak / 2**20:.0f} MiB",
         "PyTorch imported" if torch_loaded else "without PyTorch, as on the device"),
        (f"search, {args.clips:,} clips, top-10 (p50)", _ms(ours, 50),
         "faiss IndexFlatIP: " + (_ms(theirs, 50) if theirs else "not installed")),
        (f"search, {args.clips:,} clips, top-10 (p95)", _ms(ours, 95),
         "faiss IndexFlatIP: " + (_ms(theirs, 95) if theirs else "not installed")),
        ("ask, 5 clips, 3 choices (p95)", _ms(asks, 95), f"p50 {_ms(asks, 50)}"),
    ]  # fmt: skip
    missing = {"fused": "the package has no qa_logits output", "dual": "the package has no heads/qa_dual.json"}
    for head, name in (("fused", "fused QA head (gates on)"), ("dual", "gates-off QA head")):
        t = free_asks[head]
        rows.append((f"ask, 5 clips, {name}, no choices (p95)", _ms(t, 95) if t else "no such head",
                     f"p50 {_ms(t, 50)}" if t else missing[head]))  # fmt: skip
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0].ljust(width[0])}  {r[1].rjust(width[1])}  {r[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``egovlp run|search|ask|stats``: the on-device runtime from the command line (no torch).

Examples::

    egovlp run --package model.egopkg --source 0 --index memory            # camera 0 until Ctrl-C
    egovlp run --package model.egopkg --source walk.mp4 --index memory     # a file, as fast as possible
    egovlp search --package model.egopkg --index memory "C picks up the red cup" -k 5
    egovlp ask --package model.egopkg --index memory "what did C pick up?" --choice "the red cup" --choice "a box"
    egovlp stats --package model.egopkg --index memory
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

_PROGRESS_S = 1.0  # seconds between progress lines of `egovlp run`


def _common(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"egovlp {prog}", description=description)
    p.add_argument("--package", required=True, type=Path, help="model package directory or .egopkg")
    p.add_argument("--index", required=True, type=Path, help="clip index directory")
    p.add_argument("--providers", nargs="+", default=None, help="ONNX Runtime providers in order")
    return p


def _open(args: argparse.Namespace, **options: Any) -> Any:
    from egovlpv2_edge import open as open_runtime

    return open_runtime(args.package, index=args.index, providers=args.providers, **options)


def _errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: bad package, index, source or query; printed without a traceback."""
    from egovlpv2_edge.package import PackageError
    from egovlpv2_edge.runtime.index import IndexLockedError
    from egovlpv2_edge.runtime.sdk import NotReadyError
    from egovlpv2_edge.runtime.sources import SourceError

    return PackageError, SourceError, IndexLockedError, NotReadyError, ValueError, FileNotFoundError


def _guarded(prog: str, fn: Any, args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except _errors() as err:
        print(f"egovlp {prog}: {err}", file=sys.stderr)
        return 2


def _when(t: float) -> str:
    """Clip time for people: a clock time for Unix times (live sources), else seconds into the file."""
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t > 1e9 else f"{t:9.1f} s"


# ---------------------------------------------------------------------------------------------------- run
def main_run(argv: list[str] | None = None) -> int:
    """``egovlp run``: stream a source into an index, printing a progress line every second."""
    p = _common("run", "Stream a camera, video file, RTSP/HTTP URL or GStreamer pipeline into a clip index.")
    p.add_argument("--source", required=True, help="device index, file, URL or GStreamer pipeline")
    p.add_argument("--name", default=None, help="source name stored with each clip (default: the source)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=False,
                   help="files: play at the file's frame rate instead of as fast as possible")  # fmt: skip
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: the end)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per encoder call (default %(default)s)")
    p.add_argument("--max-token-clips", type=int, default=64, help="newest clips that keep fused-layer tokens")
    p.add_argument("--max-age-s", type=float, default=None, help="retention: delete clips older than this")
    p.add_argument("--max-bytes", type=int, default=None, help="retention: keep the index under this many bytes")
    p.add_argument("--thumbnails", action=argparse.BooleanOptionalAction, default=True, help="store JPEG thumbnails")
    return _guarded("run", _run, p.parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    from egovlpv2_edge.runtime.pipeline import Retention

    retention = None
    if args.max_age_s is not None or args.max_bytes is not None:
        retention = Retention(max_age_s=args.max_age_s, max_bytes=args.max_bytes)
    source = int(args.source) if args.source.isdigit() else args.source
    options = dict(source_name=args.name, realtime=args.realtime, batch_size=args.batch_size)
    options |= dict(max_token_clips=args.max_token_clips, retention=retention, thumbnails=args.thumbnails)
    with _open(args, source=source, **options) as rt:
        print(f"streaming {args.source} into {args.index} (providers: {sorted(set(rt.encoder.providers.values()))})")
        rt.start()
        t0 = time.monotonic()
        try:
            while not rt.wait(_PROGRESS_S):
                print(_progress(rt.stats(), time.monotonic() - t0), end="\r", file=sys.stderr, flush=True)
                if args.duration is not None and time.monotonic() - t0 >= args.duration:
                    break
        except KeyboardInterrupt:
            print("\ninterrupted: indexing what is buffered", file=sys.stderr)
        rt.stop()
        stats = rt.stats()
    print(_progress(stats, time.monotonic() - t0), file=sys.stderr)
    s = stats.stream
    print(f"indexed {s.clips_indexed} clips ({s.clips_dropped} dropped) from {s.frames_in} frames "
          f"({s.frames_dropped} dropped); index holds {stats.index.count} clips")  # fmt: skip
    if s.error:
        print(f"egovlp run: the stream stopped early: {s.error}", file=sys.stderr)
        return 1
    return 0


def _progress(stats: Any, elapsed: float) -> str:
    s = stats.stream
    e2e = stats.latency.get("end_to_end")
    lat = f"latency p50 {e2e.p50_ms:.0f} ms p95 {e2e.p95_ms:.0f} ms" if e2e else "latency -"
    return (
        f"{elapsed:6.0f} s  frames {s.frames_in} ({s.fps_in:.1f} fps in, {s.fps_out:.1f} out, "
        f"{s.frames_dropped} dropped)  clips {s.clips_indexed} ({s.clips_dropped} dropped)  {lat}  "
        f"rss {stats.rss_bytes / 2**20:.0f} MiB"
    )


# ------------------------------------------------------------------------------------------------- search
def main_search(argv: list[str] | None = None) -> int:
    """``egovlp search``: print the moments of an index that best match a text."""
    p = _common("search", "Find moments in a clip index by text (dual encoders, gates off).")
    p.add_argument("text", help="what happened, e.g. 'C picks up the red cup'")
    p.add_argument("-k", type=int, default=5, help="moments to print (default %(default)s)")
    p.add_argument("--since", type=float, default=None, help="only clips ending at or after this time")
    p.add_argument("--until", type=float, default=None, help="only clips starting at or before this time")
    p.add_argument("--source", default=None, help="only clips of this source")
    return _guarded("search", _search, p.parse_args(argv))


def _search(args: argparse.Namespace) -> int:
    with _open(args) as rt:
        moments = rt.search(args.text, args.k, since=args.since, until=args.until, source=args.source)
    if not moments:
        print("no clips match")
        return 0
    print(f"{'rank':>4}  {'start':>19}  {'end':>19}  {'score':>6}  {'id':>6}  source")
    for i, m in enumerate(moments, 1):
        print(f"{i:>4}  {_when(m.start):>19}  {_when(m.end):>19}  {m.score:6.3f}  {m.id:>6}  {m.source}")
    return 0


# ---------------------------------------------------------------------------------------------------- ask
def main_ask(argv: list[str] | None = None) -> int:
    """``egovlp ask``: answer a question from the best-matching indexed clips."""
    p = _common(
        "ask",
        "Answer a question from the best-matching indexed clips: with choices by the fused VTM head "
        "(gates on), without by the package's QA head (gates-off or fused).",
    )
    p.add_argument("question", help="e.g. 'what did C pick up?'")
    p.add_argument("--choice", action="append", default=None,
                   help="a candidate answer (repeatable); without, the package's QA head answers")  # fmt: skip
    p.add_argument("-k", type=int, default=5, help="clips the fused layers look at (default %(default)s)")
    p.add_argument("--window", type=float, default=None, help="only clips of the last WINDOW seconds")
    p.add_argument("--head", choices=("auto", "fused", "dual"), default="auto",
                   help="which head answers: dual (the gates-off QA head on the stored clip embeddings; choices "
                   "must be among its answers), fused (gates on: qa_logits over cached tokens, VTM for choices) or "
                   "auto (dual when the package has it and the choices allow, else fused)")  # fmt: skip
    return _guarded("ask", _ask, p.parse_args(argv))


def _ask(args: argparse.Namespace) -> int:
    with _open(args) as rt:
        answer = rt.ask(args.question, args.choice, k=args.k, window=args.window, head=args.head)
    print(f"answer: {answer.answer}  (confidence {answer.confidence:.2f}, {answer.head})")
    print("scores: " + ", ".join(f"{c} {p:.2f}" for c, p in answer.scores))
    print("evidence:")
    for m in answer.evidence:
        print(f"  {_when(m.start)} - {_when(m.end)}  match {m.score:.2f}  clip {m.id}  {m.source}")
    return 0


# -------------------------------------------------------------------------------------------------- stats
def main_stats(argv: list[str] | None = None) -> int:
    """``egovlp stats``: print the size and time span of an index."""
    p = _common("stats", "Print the size, time span and cached tokens of a clip index.")
    return _guarded("stats", _stats, p.parse_args(argv))


def _stats(args: argparse.Namespace) -> int:
    with _open(args) as rt:
        s = rt.stats()
    ix = s.index
    print(f"index {args.index}: {ix.count} clips, {ix.bytes / 2**20:.2f} MiB "
          f"(vectors {ix.vector_bytes / 2**20:.2f}, tokens {ix.token_bytes / 2**20:.2f} for {ix.token_clips} clips, "
          f"thumbnails {ix.thumbnail_bytes / 2**20:.2f})")  # fmt: skip
    if ix.count:
        print(f"clips from {_when(ix.oldest_ts)} to {_when(ix.newest_ts)}")
    print(f"package {rt.package.manifest.name} {rt.package.manifest.version}; providers "
          f"{sorted(set(s.providers.values()))}")  # fmt: skip
    return 0

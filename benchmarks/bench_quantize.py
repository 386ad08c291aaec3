"""Latency and drift of every graph in FP32, NNCF INT8, ORT dynamic INT8 (variants), ORT static and FP16.

Exports a preset (random init, or ``--checkpoint``), builds an FP32 package, calibrates on real decoded clips
(``--data``, default ``outputs/demo/data`` from ``egovlp demo``; a folder of videos works too), then times each
variant side by side with FP32 in ONNX Runtime CPU (same threads, batch 1 and 8) and measures its drift on
held-out clips/texts. Prints one table; ``--json`` also writes the numbers.

    python benchmarks/bench_quantize.py --preset egovlpv2_edge --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path


@contextlib.contextmanager
def _stdout_to_stderr():  # noqa: ANN202
    """Send everything written to stdout (NNCF's progress bars and logs, at the file-descriptor level) to stderr, so
    stdout carries only the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


DEFAULT_METHODS = ["nncf", "nncf_sym", "nncf_noattn", "ort_dynamic", "ort_dynamic_pc", "ort_dynamic_mm", "fp16"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="egovlpv2_edge")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--data", type=Path, default=Path("outputs/demo/data"), help="EgoClip folder or video folder")
    p.add_argument("--tokenizer", type=Path, default=Path("outputs/demo/teacher/tokenizer.json"))
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--graphs", nargs="+", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-clips", type=int, default=24)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("nncf", "onnxruntime", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from egovlpv2_edge import create_model
    from egovlpv2_edge.compress._cli_quantize import table
    from egovlpv2_edge.compress.export import export_all
    from egovlpv2_edge.compress.quantize import quantize_package
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import Preprocessing, build_package

    start = time.perf_counter()
    model = create_model(args.preset, pretrained=None if args.checkpoint is None else str(args.checkpoint))
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        root = Path(tmp)
        export_all(model, root / "graphs", validate=False)
        pkg = build_package(
            root / "fp32",
            config=model.cfg,
            graphs={g: {"fp32": root / "graphs" / f"{g}.onnx"} for g in GRAPH_NAMES},
            selected={g: ("fp32", "export") for g in GRAPH_NAMES},
            tokenizer=args.tokenizer,
            preprocessing=Preprocessing.from_config(model.cfg, clip_seconds=2.0, stride_seconds=1.0),
            archive=False,
        )
        print(f"exported {args.preset} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        with _stdout_to_stderr():
            report = quantize_package(
                pkg, args.data, root / "q", methods=args.methods, graphs=args.graphs, threads=args.threads,
                max_clips=args.max_clips, keep="selected", progress=lambda g: print(f"... {g}", file=sys.stderr),
            )  # fmt: skip
            shares = _op_shares(pkg, args)
    print(f"preset {args.preset} ({'random init' if args.checkpoint is None else args.checkpoint}); "
          f"{report.measured_on}; calibration {report.calibration} ({args.max_clips} clips, 1/4 held out)")  # fmt: skip
    print(table(report))
    for name, c in report.choices.items():
        print(f"{name}: {c.selected} ({c.reason})")
    print()
    print(_shares_table(shares))
    print()
    print(_ceiling_table(shares, args.threads))
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json:
        data = {n: [r.to_dict() for r in c.candidates] for n, c in report.choices.items()}
        args.json.write_text(json.dumps({"measured_on": report.measured_on, "graphs": data}, indent=2) + "\n")
    return 0


BATCHES = (1, 8)


def _op_shares(pkg: object, args: argparse.Namespace) -> dict[tuple[str, int], object]:
    """FP32 kernel time per operator type of every graph, on the same decoded inputs as the quantization."""
    from egovlpv2_edge.compress._measure import op_time_shares
    from egovlpv2_edge.compress.calibration import graph_samples, load_calibration, stack
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import open_package

    src = open_package(pkg)
    fp32 = {g: src.graph_path(g, "fp32") for g in GRAPH_NAMES}
    data = load_calibration(args.data, src.preprocessing, src.tokenizer(), max_clips=max(BATCHES))
    samples = graph_samples(data, fp32, src.specs, threads=args.threads)
    return {(g, b): op_time_shares(fp32[g], stack(samples[g], b), threads=args.threads)
            for g in GRAPH_NAMES for b in BATCHES}  # fmt: skip


def _shares_table(shares: dict[tuple[str, int], object]) -> str:
    """Per graph and batch: the share of FP32 kernel time in matrix products and convolutions."""
    from egovlpv2_edge.compress._measure import GEMM_OPS
    from egovlpv2_edge.graphs import GRAPH_NAMES

    lines = [
        "FP32 kernel time per graph (ONNX Runtime profiler) and its share in matrix products and convolutions, the",
        "ops INT8 replaces; video encoder = video_lower + video_upper",
        f"{'graph':14s} {'batch':>5s} {'kernel ms':>9s} {'GEMM share':>10s}  largest other ops",
    ]
    for b in BATCHES:
        for g in GRAPH_NAMES:
            r = shares[(g, b)]
            others = ", ".join(f"{k} {v:.0%}" for k, v in list(r.shares.items())[:7] if k not in GEMM_OPS)
            lines.append(f"{g:14s} {b:5d} {r.kernel_ms:9.3f} {r.gemm_share:10.0%}  {others}")
        total = shares[("video_lower", b)].kernel_ms + shares[("video_upper", b)].kernel_ms
        lines.append(f"{'video encoder':14s} {b:5d} {total:9.3f} {_encoder_share(shares, b, 'gemm_share'):10.0%}")
    return "\n".join(lines)


def _encoder_share(shares: dict[tuple[str, int], object], batch: int, attr: str) -> float:
    """A share (``gemm_share``, ``linear_share``) of the video encoder's kernel time: its two graphs' shares
    weighted by their kernel times."""
    parts = [shares[(g, batch)] for g in ("video_lower", "video_upper")]
    return sum(p.kernel_ms * getattr(p, attr) for p in parts) / sum(p.kernel_ms for p in parts)


PEAK_SHAPE = (2048, 2048, 2048)


def _ceiling_table(shares: dict[tuple[str, int], object], threads: int) -> str:
    """INT8's ceiling for the video encoder: its own linear layers timed alone in FP32 and dynamic INT8, and the
    whole-encoder speedup those allow given the share of its time they hold (Amdahl)."""
    from egovlpv2_edge.compress._measure import amdahl_speedup, int8_gemm_timings

    per_batch: dict[int, dict[tuple[int, int, int], float]] = {}
    for b in BATCHES:
        counts: dict[tuple[int, int, int], float] = {}
        for g in ("video_lower", "video_upper"):
            for shape, n in shares[(g, b)].weight_gemms.items():
                counts[shape] = counts.get(shape, 0.0) + n
        per_batch[b] = counts
    shapes = [PEAK_SHAPE] + sorted({s for c in per_batch.values() for s in c})
    timing = {t.shape: t for t in int8_gemm_timings(shapes, threads)}
    lines = [
        "INT8 ceiling: each linear layer (product by a weight + bias) alone, FP32 beside ORT dynamic INT8 (uint8 x",
        "int8, activations quantized at run time), same session settings; the video encoder's layers are those of",
        "video_lower + video_upper",
        f"{'layer M x K x N':22s} {'per run':>7s} {'fp32 ms':>9s} {'int8 ms':>9s} {'speedup':>8s}",
    ]
    peak = timing[PEAK_SHAPE]
    gflops = 2 * math.prod(PEAK_SHAPE) / peak.fp32_ms / 1e6
    name = "x".join(map(str, PEAK_SHAPE)) + " (peak)"
    lines.append(f"{name:22s} {'-':>7s} {peak.fp32_ms:9.3f} {peak.int8_ms:9.3f} {peak.speedup:7.2f}x  "
                 f"({gflops:.0f} GFLOP/s fp32, {gflops * peak.speedup:.0f} GOP/s int8)")  # fmt: skip
    summary = []
    for b in BATCHES:
        fp32 = int8 = 0.0
        for shape, n in sorted(per_batch[b].items()):
            t = timing[shape]
            fp32, int8 = fp32 + n * t.fp32_ms, int8 + n * t.int8_ms
            name = "x".join(map(str, shape))
            lines.append(f"{name:22s} {n:7.0f} {t.fp32_ms:9.4f} {t.int8_ms:9.4f} {t.speedup:7.2f}x")
        share = _encoder_share(shares, b, "linear_share")
        g = fp32 / int8 if int8 else float("nan")
        summary.append(
            f"video encoder, batch {b}: linear layers {share:.0%} of FP32 kernel time, {g:.2f}x faster in INT8 "
            f"(time-weighted) -> about {amdahl_speedup(share, g):.2f}x for the encoder; at most "
            f"{amdahl_speedup(share, float('inf')):.2f}x even if they took no time"
        )
    return "\n".join(lines + summary)


if __name__ == "__main__":
    raise SystemExit(main())

"""``egovlp compress quantize``: INT8/FP16 variants of an FP32 package's graphs, each graph's precision by measurement.

Writes a new package holding FP32 and the chosen precision of each graph (``--keep all``: every variant that ran),
with the reason and every candidate's latency and drift in the manifest, and prints the measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from egovlpv2_edge.graphs import GRAPH_NAMES

HELP = "INT8/FP16 variants of a package's graphs; keep the faster precision only where accuracy holds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``quantize`` flags."""
    from egovlpv2_edge.compress._measure import SelectionRule
    from egovlpv2_edge.compress.quantize import DEFAULT_METHODS, METHODS

    rule = SelectionRule()
    p.add_argument("--package", type=Path, required=True, help="FP32 package (directory or .egopkg)")
    p.add_argument(
        "--calibration", type=Path, required=True, help="EgoClip folder/csv (`egovlp data synth`) or a video folder"
    )
    p.add_argument("--out", type=Path, required=True, help="new package directory (its name = package name)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS), help="variants")
    p.add_argument("--graphs", nargs="+", choices=GRAPH_NAMES, default=None, help="graphs to try (default: all)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads when timing (default %(default)s)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes timed (default 1 8)")
    p.add_argument("--max-clips", type=int, default=48, help="clips/texts decoded (default %(default)s)")
    p.add_argument("--keep", choices=("selected", "all"), default="selected", help="variants stored in the package")
    p.add_argument("--min-cosine", type=float, default=rule.min_cosine, help="least cosine to FP32 (%(default)s)")
    p.add_argument("--max-logit-diff", type=float, default=rule.max_logit_diff, help="VTM logits (%(default)s)")
    p.add_argument("--min-speedup", type=float, default=rule.min_speedup, help="at batch 1 (%(default)s)")
    p.add_argument(
        "--ignore", action="append", default=[], metavar="GRAPH=REGEX", help="node names kept in float (repeatable)"
    )
    p.add_argument("--report", type=Path, default=None, help="also write the measurements as JSON")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace --out")


def _ignore(flags: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for flag in flags:
        graph, sep, regex = flag.partition("=")
        if not sep or graph not in GRAPH_NAMES or not regex:
            raise ValueError(f"--ignore {flag!r}: expected GRAPH=REGEX with GRAPH one of {', '.join(GRAPH_NAMES)}")
        out.setdefault(graph, []).append(regex)
    return out


def table(report: object) -> str:
    """Latency per graph and precision, speedup vs FP32 and drift, the chosen precision marked ``*``."""
    rows = [("graph", "precision", "method", "ms b1", "ms b8", "speedup b1", "min cos", "max diff", "verdict")]
    for name, choice in report.choices.items():  # type: ignore[attr-defined]
        ref = next((c for c in choice.candidates if c.precision == "fp32"), None)
        for c in choice.candidates:
            lat = c.latency_ms
            base = ref.latency_ms.get("batch1") if ref else None
            speed = f"{base / lat['batch1']:.2f}x" if base and lat.get("batch1") else "-"
            rows.append((
                name, ("*" if c.precision == choice.selected else " ") + c.precision, c.method,
                *(f"{lat[k]:.3f}" if k in lat else "-" for k in ("batch1", "batch8")), speed,
                *(f"{c.drift[k]:.4f}" if k in c.drift else "-" for k in ("min_cosine", "max_abs_diff")),
                "ok" if c.accepted else "no",
            ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def run(args: argparse.Namespace) -> int:
    """Run ``egovlp compress quantize``; 0 on success, 1 on a package/data failure, 2 on bad arguments."""
    from egovlpv2_edge.compress._measure import SelectionRule
    from egovlpv2_edge.compress.calibration import CalibrationError
    from egovlpv2_edge.compress.quantize import QuantizationError, quantize_package
    from egovlpv2_edge.package import PackageError
    from egovlpv2_edge.progress import progress

    try:
        ignore = _ignore(args.ignore)
    except ValueError as exc:
        print(f"egovlp compress quantize: {exc}", file=sys.stderr)
        return 2
    rule = SelectionRule(args.min_cosine, args.max_logit_diff, min_speedup=args.min_speedup)
    bar = progress(total=len(args.graphs or GRAPH_NAMES), desc="quantize", unit="graph")

    def progress(graph: str) -> None:
        bar.set_postfix_str(graph, refresh=False)
        bar.update(1)

    try:
        report = quantize_package(
            args.package, args.calibration, args.out,
            methods=args.methods, rule=rule, graphs=args.graphs, threads=args.threads, batches=args.batches,
            max_clips=args.max_clips, keep=args.keep, ignore=ignore, overwrite=args.overwrite, progress=progress,
        )  # fmt: skip
    except (QuantizationError, CalibrationError, PackageError) as exc:
        print(f"egovlp compress quantize: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    print(f"measured on {report.measured_on}; calibration {report.calibration}")
    print(table(report))
    for name, c in report.choices.items():
        print(f"{name}: {c.selected} ({c.reason})")
    if args.report:
        data = {n: {"selected": c.selected, "reason": c.reason, "candidates": [r.to_dict() for r in c.candidates]}
                for n, c in report.choices.items()}  # fmt: skip
        args.report.write_text(json.dumps({"measured_on": report.measured_on, "graphs": data}, indent=2) + "\n")
    print(f"wrote package {report.package}")
    return 0

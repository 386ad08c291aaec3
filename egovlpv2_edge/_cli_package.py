"""``egovlp package``: verify, inspect and assemble model packages (a directory or one ``.egopkg`` file).

Subcommands:
    verify  Check a package end to end (schema, files, sha256, graph interfaces, tokenizer); exit 1 on failure.
    info    Print a package's manifest summary: preset, graphs with precision/size/reason, preprocessing, metrics.
    build   Assemble a package by hand from a folder of ``<graph>.<precision>.onnx`` files (fp32 selected unless
            ``--select`` says otherwise), with the answer vocabularies of ``answer_vocabs.json`` in that folder
            (what ``egovlp compress export`` writes for a QA head) or ``--answer-vocabs``, and the gates-off QA head
            ``qa_dual.json`` there when the export wrote one. Packages from a trained model come from the compress
            step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from egovlpv2_edge._package_qa import ANSWER_VOCABS_FILE, DUAL_QA_FILE, DUAL_QA_HEAD, read_answer_vocabs
from egovlpv2_edge.config import get_config, list_models
from egovlpv2_edge.graphs import GRAPH_NAMES
from egovlpv2_edge.package import (
    GraphEntry,
    Manifest,
    PackageError,
    Preprocessing,
    archive_path,
    build_package,
    load_manifest,
    verify_package,
)

DEFAULT_PRECISION = "fp32"
DEFAULT_REASON = "fp32 reference (default of `egovlp package build`; no comparison run)"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egovlp package", description="Verify, inspect and assemble model packages.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{verify,info,build}")
    verify = sub.add_parser("verify", help="check a package directory or .egopkg end to end")
    verify.add_argument("path", type=Path, help="package directory or .egopkg archive")
    info = sub.add_parser("info", help="print a package's manifest summary")
    info.add_argument("path", type=Path, help="package directory or .egopkg archive")
    build = sub.add_parser("build", help="assemble a package from a folder of <graph>.<precision>.onnx files")
    build.add_argument("--config-preset", required=True, help=f"model preset; one of: {', '.join(list_models())}")
    build.add_argument("--graphs-dir", type=Path, required=True, help="folder of <graph>.<precision>.onnx files")
    build.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json file")
    build.add_argument("--out", type=Path, required=True, help="package directory to create (its name = package name)")
    build.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="GRAPH=PRECISION[:REASON]",
        help=f"precision the runtime uses for a graph (repeatable; default {DEFAULT_PRECISION})",
    )
    build.add_argument("--version", default="0.1.0", help="package version (default %(default)s)")
    build.add_argument("--clip-seconds", type=float, default=2.0, help="clip window length (default %(default)s)")
    build.add_argument("--stride-seconds", type=float, default=1.0, help="step between clips (default %(default)s)")
    build.add_argument("--metrics", type=Path, help="JSON file: stage -> metric -> value (accuracy and speed)")
    build.add_argument(
        "--answer-vocabs",
        type=Path,
        help=f"JSON file: head name -> answer strings (default: {ANSWER_VOCABS_FILE} in --graphs-dir, if there); "
        "a fused graph with qa_logits needs 'qa'",
    )
    build.add_argument("--archive", action=argparse.BooleanOptionalAction, default=True, help="also write .egopkg")
    build.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace a package")
    return parser


def scan_graphs_dir(graphs_dir: Path) -> dict[str, dict[str, Path]]:
    """Group ``<graph>.<precision>.onnx`` files by graph and precision; a bare ``<graph>.onnx`` (what
    ``egovlp compress export`` writes) counts as fp32.

    Args:
        graphs_dir: The folder to scan (not recursive).

    Returns:
        Graph -> precision -> file.

    Raises:
        PackageError: The folder does not exist, or a file's graph name is not one of the package graphs.
    """
    if not graphs_dir.is_dir():
        raise PackageError(f"--graphs-dir {str(graphs_dir)!r} is not a folder; pass the folder of exported graphs")
    graphs: dict[str, dict[str, Path]] = {}
    for path in sorted(graphs_dir.glob("*.onnx")):
        graph, _, precision = path.name.removesuffix(".onnx").rpartition(".")
        if not graph and precision in GRAPH_NAMES:  # an export folder: <graph>.onnx is the fp32 graph
            graph, precision = precision, "fp32"
        if graph not in GRAPH_NAMES or not precision:
            raise PackageError(
                f"unexpected file {path.name!r} in {str(graphs_dir)!r}: names must be <graph>.<precision>.onnx "
                "(or <graph>.onnx for fp32) with "
                f"graph one of {', '.join(GRAPH_NAMES)}"
            )
        graphs.setdefault(graph, {})[precision] = path
    return graphs


def _selection(graphs: dict[str, dict[str, Path]], flags: list[str]) -> dict[str, tuple[str, str]]:
    selected = {g: (DEFAULT_PRECISION, DEFAULT_REASON) for g in graphs}
    for flag in flags:
        graph, sep, rest = flag.partition("=")
        precision, _, reason = rest.partition(":")
        if not sep or graph not in GRAPH_NAMES or not precision:
            raise PackageError(f"--select {flag!r}: expected GRAPH=PRECISION[:REASON] with GRAPH one of {GRAPH_NAMES}")
        selected[graph] = (precision, reason or f"{precision} selected by hand with --select")
    return selected


def _build(args: argparse.Namespace) -> int:
    try:
        cfg = get_config(args.config_preset)
    except ValueError as exc:
        print(f"egovlp package: {exc}", file=sys.stderr)
        return 2
    graphs = scan_graphs_dir(args.graphs_dir)
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    vocab_file = args.answer_vocabs or args.graphs_dir / ANSWER_VOCABS_FILE
    vocabs = read_answer_vocabs(vocab_file) if args.answer_vocabs or vocab_file.is_file() else None
    dual = args.graphs_dir / DUAL_QA_FILE
    out = build_package(
        args.out,
        config=cfg,
        graphs=graphs,
        selected=_selection(graphs, args.select),
        tokenizer=args.tokenizer,
        preprocessing=Preprocessing.from_config(cfg, args.clip_seconds, args.stride_seconds),
        answer_vocabs=vocabs,
        heads={DUAL_QA_HEAD: dual} if dual.is_file() else None,
        metrics=metrics,
        version=args.version,
        archive=args.archive,
        overwrite=args.overwrite,
    )
    print(f"built {out}" + (f" and {archive_path(out)}" if args.archive else ""))
    print(_summary(load_manifest(out)))
    return 0


def _candidate_lines(g: GraphEntry) -> list[str]:
    """The precisions measured for a graph's choice: latency per batch, drift, verdict."""
    if not g.candidates:
        return []
    lines = [f"     measured on {g.measured_on or 'unknown'}:"]
    for c in g.candidates:
        lat = ", ".join(f"{k} {v:.3g} ms" for k, v in c.latency_ms.items()) or "no latency"
        drift = ", ".join(f"{k} {v:.4g}" for k, v in c.drift.items())
        verdict = "accepted" if c.accepted else "rejected"
        lines.append(f"       {c.precision:12s} {c.method:12s} {lat}; {drift or 'reference'}; {verdict}: {c.note}")
    return lines


def _summary(m: Manifest) -> str:
    """The manifest as a few aligned human-readable lines."""
    lines = [
        f"package {m.name} {m.version} (schema {m.schema_version}), created {m.created}",
        f"preset {m.preset}; git {m.git_revision or 'unknown'}; checkpoint sha256 {m.source_checkpoint_sha256 or '-'}",
        "graphs:",
    ]
    for name, g in m.graphs.items():
        lines.append(f"  {name:12s} selected {g.selected:6s} ({g.reason})")
        for precision, f in g.files.items():
            mark = "*" if precision == g.selected else " "
            lines.append(f"   {mark} {precision:6s} {f.size / 2**20:9.2f} MiB  {f.file}  sha256 {f.sha256[:16]}")
        lines += _candidate_lines(g)
    lines.append("preprocessing: " + ", ".join(f"{k} {v}" for k, v in m.preprocessing.to_dict().items()))
    lines.append("fusion: " + ", ".join(f"{k} {v}" for k, v in m.fusion.items()))
    vocabs = ", ".join(f"{n} ({len(v)})" for n, v in m.answer_vocabs.items())
    qa = m.qa_answers()
    head = f"fused_upper returns qa_logits ({qa} answers)" if qa else "none in fused_upper"
    if DUAL_QA_HEAD in m.heads:
        head += f"; gates-off head {m.heads[DUAL_QA_HEAD].file} on the dual embeddings"
    elif not qa:
        head += " (ask needs choices)"
    lines.append(f"tokenizer: {m.tokenizer.file}; answer vocabularies: {vocabs or 'none'}; QA head: {head}")
    if m.providers:
        lines.append("provider settings: " + ", ".join(f"{n} ({e.file})" for n, e in m.providers.items()))
    lines.append("metrics:" + ("" if m.metrics else " none"))
    lines += [f"  {stage}: " + ", ".join(f"{k} {v:g}" for k, v in vals.items()) for stage, vals in m.metrics.items()]
    lines.append("libraries: " + ", ".join(f"{k} {v}" for k, v in m.libraries.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp package``.

    Args:
        argv: Arguments after ``package``; ``sys.argv[1:]`` when None.

    Returns:
        0 on success, 1 when a package is invalid or cannot be built, 2 on a bad preset.
    """
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            report = verify_package(args.path)
            print(f"OK {args.path}\n{report.summary()}")
            return 0
        if args.command == "info":
            print(_summary(load_manifest(args.path)))
            print("(run `egovlp package verify` to check the files)")
            return 0
        return _build(args)
    except (PackageError, OSError, json.JSONDecodeError) as exc:
        print(f"FAILED {args.path if args.command != 'build' else args.out}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

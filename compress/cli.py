"""``egovlp compress``: export, quantize and TensorRT-configure a model's gate-switch graphs.

Examples::

    egovlp compress export --preset egovlpv2_edge --checkpoint run/best.pt --out build/onnx
    egovlp compress export --preset egovlpv2_small --checkpoint runs/qa/finetuned.pt --out build/onnx  # + qa_logits
    egovlp compress quantize --package build/pkg_fp32 --calibration data/synth --out build/pkg_int8
    egovlp compress trt --package build/pkg_int8 --out build/pkg_trt --max-batch 16

Each subcommand is one :class:`Subcommand` in :data:`SUBCOMMANDS` (name, help, how it adds its arguments, how it
runs); adding one is one line there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from egovlpv2_edge.compress import _cli_distill, _cli_quantize, _cli_trt
from egovlpv2_edge.config import list_models
from egovlpv2_edge.graphs import GRAPH_NAMES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subcommand:
    """One ``egovlp compress`` subcommand.

    Attributes:
        name: The subcommand word.
        help: One line for ``--help``.
        add_arguments: Adds its flags to its parser.
        run: Runs it; returns the exit status.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_export(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("--preset", required=True, help=f"model preset, one of: {', '.join(list_models())}")
    ex.add_argument("--checkpoint", type=Path, default=None, help="weights to load (random init when omitted)")
    ex.add_argument("--out", type=Path, required=True, help="output folder for <graph>.onnx files")
    ex.add_argument("--graphs", nargs="+", choices=GRAPH_NAMES, default=None, help="graphs to export (default: all)")
    ex.add_argument(
        "--validate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare each graph with PyTorch in ONNX Runtime on fresh inputs",
    )
    ex.add_argument(
        "--qa-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when the checkpoint carries a fusion-mode QA head (fine-tuned or distilled), add its qa_logits to "
        "fused_upper and write its answers to <out>/answer_vocabs.json for `egovlp package build`; a gates-off QA "
        "head on the dual embeddings is written as <out>/qa_dual.json",
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned graph names, right-aligned numbers."""
    header = ("graph", "max abs diff", "tolerance", "size MB", "seconds")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join(line(r) for r in [header, *rows])


def _export(args: argparse.Namespace) -> int:
    from egovlpv2_edge import create_model
    from egovlpv2_edge.compress.export import (
        ExportMismatchError,
        check_qa_head,
        checkpoint_dual_qa_head,
        checkpoint_qa_head,
        export_one,
        model_specs,
        write_qa_files,
    )
    from egovlpv2_edge.progress import progress

    try:
        model = create_model(args.preset, pretrained=None if args.checkpoint is None else str(args.checkpoint))
        qa = checkpoint_qa_head(args.checkpoint) if args.qa_head and args.checkpoint is not None else None
        if qa is not None:
            check_qa_head(model, qa.head)
        dual = None
        if args.qa_head and args.checkpoint is not None:
            dual = checkpoint_dual_qa_head(args.checkpoint, model.cfg.heads.embed_dim)
    except (ValueError, FileNotFoundError) as exc:
        print(f"egovlp compress export: {exc}", file=sys.stderr)
        return 2
    head = None if qa is None else qa.head
    specs = model_specs(model, head)
    names = args.graphs or list(GRAPH_NAMES)
    rows = []
    bar = progress(names, desc="export", unit="graph")
    for name in bar:
        bar.set_postfix_str(name, refresh=False)
        try:
            graph = export_one(model, name, args.out, validate=args.validate, qa_head=head)
        except ExportMismatchError as exc:
            print(f"egovlp compress export: {exc}", file=sys.stderr)
            return 1
        diff = "-" if graph.max_abs_diff is None else f"{graph.max_abs_diff:.2e}"
        size = graph.path.stat().st_size / 1e6
        rows.append((name, diff, f"{specs[name].atol:.0e}", f"{size:.2f}", f"{graph.seconds:.1f}"))
    print(_table(rows))
    print(f"wrote {len(rows)} graph(s) to {args.out}")
    try:
        written = write_qa_files(args.out, qa, dual)
    except ValueError as exc:
        print(f"egovlp compress export: {exc}", file=sys.stderr)
        return 2
    if qa is not None:
        print(f"QA head: fused_upper returns qa_logits over {len(qa.answers)} answers, listed in {written[0]}")
    if dual is not None:
        print(f"dual QA head (gates off, on the dual embeddings): {dual.head.num_answers} answers, {written[-1]}")
    return 0


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("export", "export (and validate) the ONNX graphs of a model", _add_export, _export),
    Subcommand("distill", _cli_distill.HELP, _cli_distill.add_arguments, _cli_distill.run),
    Subcommand("quantize", _cli_quantize.HELP, _cli_quantize.add_arguments, _cli_quantize.run),
    Subcommand("trt", _cli_trt.HELP, _cli_trt.add_arguments, _cli_trt.run),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egovlp compress", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in SUBCOMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp compress``.

    Args:
        argv: Arguments after ``compress``; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 on success, 1 when the work fails (a graph fails validation, a package does not
        verify), 2 on bad arguments, 3 when a needed backend (CUDA, TensorRT) is missing.
    """
    args = _parser().parse_args(argv)
    return next(c for c in SUBCOMMANDS if c.name == args.cmd).run(args)  # argparse restricts cmd to these


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())

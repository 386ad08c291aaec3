"""``egovlp compress trt``: TensorRT-EP settings into a package, and optionally Torch-TensorRT engines (CUDA only).

The settings (``providers/tensorrt.json``: engine/timing cache, min/opt/max shape profiles per graph from the graph
specs' dynamic batch axis, FP16/INT8 flags) need no GPU. ``--engines DIR`` also compiles the graphs from the
PyTorch model with Torch-TensorRT, which needs CUDA and the ``tensorrt`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "TensorRT execution-provider settings (shape profiles, caches, precision) into a package; engines with CUDA"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``trt`` flags."""
    p.add_argument("--package", type=Path, required=True, help="package (directory or .egopkg)")
    p.add_argument("--out", type=Path, required=True, help="new package directory with providers/tensorrt.json")
    p.add_argument("--min-batch", type=int, default=1, help="profile minimum batch (default %(default)s)")
    p.add_argument("--opt-batch", type=int, default=1, help="profile batch kernels are tuned for (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=16, help="profile maximum batch (default %(default)s)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="allow FP16 kernels")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True, help="INT8 for QDQ graphs")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT workspace cap (default %(default)s)")
    p.add_argument("--engines", type=Path, default=None, help="also build Torch-TensorRT engines here (CUDA)")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights for --engines (random init when omitted)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace --out")


def run(args: argparse.Namespace) -> int:
    """Run ``egovlp compress trt``; 0 on success, 1 on a package failure, 2 on bad arguments, 3 without TensorRT."""
    import tempfile

    from egovlpv2_edge.compress.trt import Profile, TensorRTUnavailableError, trt_settings, write_trt_settings
    from egovlpv2_edge.package import PackageError, build_package, open_package

    try:
        profile = Profile(args.min_batch, args.opt_batch, args.max_batch)
    except ValueError as exc:
        print(f"egovlp compress trt: {exc}", file=sys.stderr)
        return 2
    try:
        if args.engines is not None:
            _engines(args, profile)
        src = open_package(args.package)
        m, root = src.manifest, src.root
        files = {n: {p: root / f.file for p, f in g.files.items()} for n, g in m.graphs.items()}
        specs = src.specs
        settings = trt_settings(
            specs, files, {n: g.selected for n, g in m.graphs.items()},
            profiles=dict.fromkeys(specs, profile), fp16=args.fp16, int8=args.int8, workspace_mb=args.workspace_mb,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = write_trt_settings(settings, Path(tmp) / "tensorrt.json")
            out = build_package(
                args.out, config=src.config, graphs=files,
                selected={n: (g.selected, g.reason) for n, g in m.graphs.items()},
                tokenizer=root / m.tokenizer.file, preprocessing=m.preprocessing, answer_vocabs=m.answer_vocabs,
                heads={n: root / e.file for n, e in m.heads.items()},
                providers={**{n: root / e.file for n, e in m.providers.items()}, "tensorrt": path},
                candidates={n: g.candidates for n, g in m.graphs.items() if g.candidates},
                measured_on=next((g.measured_on for g in m.graphs.values() if g.measured_on), ""),
                source_checkpoint=m.source_checkpoint_sha256, metrics=m.metrics, version=m.version,
                overwrite=args.overwrite,
            )  # fmt: skip
    except TensorRTUnavailableError as exc:
        print(f"egovlp compress trt: {exc}", file=sys.stderr)
        return 3
    except PackageError as exc:
        print(f"egovlp compress trt: {exc}", file=sys.stderr)
        return 1
    for name, g in settings["graphs"].items():
        o = g["options"]
        print(f"{name:12s} {g['precision']:10s} fp16={o['trt_fp16_enable']} int8={o['trt_int8_enable']}  "
              f"{o['trt_profile_min_shapes']} .. {o['trt_profile_max_shapes']}")  # fmt: skip
    print(f"wrote package {out} with providers/tensorrt.json")
    return 0


def _engines(args: argparse.Namespace, profile: object) -> None:
    from egovlpv2_edge import create_model
    from egovlpv2_edge.compress.export import checkpoint_qa_head, model_specs
    from egovlpv2_edge.compress.trt import build_engines, require_tensorrt
    from egovlpv2_edge.package import load_manifest

    require_tensorrt()  # fail before loading anything
    manifest = load_manifest(args.package)
    model = create_model(manifest.preset, pretrained=None if args.checkpoint is None else str(args.checkpoint))
    qa = checkpoint_qa_head(args.checkpoint) if args.checkpoint is not None and manifest.qa_answers() else None
    head = None if qa is None else qa.head  # the package's fused graph has qa_logits: so do its engines
    specs = model_specs(model, head)
    build_engines(model, specs, args.engines, profiles=dict.fromkeys(specs, profile), fp16=args.fp16, qa_head=head)

"""``egovlp demo``: the end-to-end pipeline on synthetic egocentric footage, stage by stage.

data -> teacher pre-training -> zero-shot evaluation -> ONNX export -> model package -> on-device index and
queries through ONNX Runtime (gates off for search, on for re-ranking), then a report and pictures. Each stage
writes its outputs under ``--out`` and is skipped when they exist, so a second run takes seconds.

The demo is the application layer: it imports training, compression and the runtime inside the stages.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("egovlp.demo")

QUERIES = (
    "#C C picks up the red cup",
    "#C C opens the blue box",
    "#C C wipes the white bowl with a cloth",
    "#C C pours water from the glass jar",
)


@dataclass
class Demo:
    """Settings and results of one demo run."""

    out: Path
    videos: int = 40
    steps: int = 150
    batch_size: int = 16
    preset: str = "egovlpv2_small"
    seed: int = 0
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def teacher_dir(self) -> Path:
        return self.out / "teacher"


def _stage(demo: Demo, index: int, total: int, name: str, estimate: str, done: Path, fn: Callable[[], Any]) -> None:
    if done.exists():
        print(f"[{index}/{total}] {name}: reusing {done}")
        return
    print(f"[{index}/{total}] {name} (about {estimate} on a 2-core CPU) ...", flush=True)
    t0 = time.perf_counter()
    fn()
    demo.timings[name] = time.perf_counter() - t0
    print(f"[{index}/{total}] {name}: done in {demo.timings[name]:.0f} s", flush=True)


def stage_data(demo: Demo) -> None:
    """Render the synthetic egocentric dataset (three verb-noun pairs held out for a compositional split)."""
    from egovlpv2_edge.training.data.cli import main as data_main

    tmp = demo.data.with_name("data.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    args = ["synth", "--out", str(tmp), "--videos", str(demo.videos), "--seed", str(demo.seed)]
    if data_main(args + ["--holdout-pairs", "open:green_box", "cut:bread", "pick_up:red_cup"]) != 0:
        raise RuntimeError("synthetic data generation failed (see the messages above)")
    tmp.rename(demo.data)  # only a finished dataset gets the final name


def stage_teacher(demo: Demo) -> None:
    """Pre-train the teacher (EgoNCE + MLM + 2 VTM) on the train split."""
    from egovlpv2_edge.runconfig import resolve
    from egovlpv2_edge.training.trainer import PretrainConfig, train

    overrides = [
        f"data={demo.data}",
        f"out={demo.teacher_dir}",
        f"preset={demo.preset}",
        f"seed={demo.seed}",
        f"batch_size={demo.batch_size}",
        f"max_steps={demo.steps}",
        "num_workers=1",
        "log_every=10",
        "ckpt_every=50",
    ]
    train(resolve(PretrainConfig, None, overrides))


def stage_eval(demo: Demo) -> None:
    """Zero-shot EgoMCQ on held-out videos (dual / fusion / ensemble) and text-to-video recall."""
    from egovlpv2_edge.training.eval_cli import load_run
    from egovlpv2_edge.training.evaluate import evaluate_egomcq, evaluate_retrieval

    model, tok = load_run(demo.teacher_dir / "teacher.pt")
    mcq = evaluate_egomcq(model, tok, demo.data)
    shuffled = evaluate_egomcq(model, tok, demo.data, shuffle_frames=True)
    recall = evaluate_retrieval(model, tok, demo.data, split="test")
    payload = {"egomcq": mcq.accuracy, "egomcq_shuffled": shuffled.accuracy, "counts": mcq.counts, "retrieval": recall}
    (demo.out / "eval.json").write_text(json.dumps(payload, indent=2))


def stage_export(demo: Demo) -> None:
    """Export the five gate-switch graphs to ONNX and validate each against PyTorch."""
    from egovlpv2_edge.compress.export import export_all
    from egovlpv2_edge.training.eval_cli import load_run

    model, _ = load_run(demo.teacher_dir / "teacher.pt")
    tmp = demo.out / "graphs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    exported = export_all(model, tmp)
    report = {name: {"max_abs_diff": g.max_abs_diff, "seconds": g.seconds} for name, g in exported.items()}
    (tmp / "export.json").write_text(json.dumps(report, indent=2))
    tmp.rename(demo.out / "graphs")


def stage_package(demo: Demo) -> None:
    """Build and verify the versioned model package (directory and single-file archive)."""
    import torch

    from egovlpv2_edge.config import ModelConfig
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import Preprocessing, build_package, verify_package

    cfg = ModelConfig.from_dict(torch.load(demo.teacher_dir / "teacher.pt", weights_only=False)["config"])
    graphs = {g: {"fp32": demo.out / "graphs" / f"{g}.onnx"} for g in GRAPH_NAMES}
    reason = "fp32: the only precision built so far (INT8 selection comes with the compression step)"
    evals = json.loads((demo.out / "eval.json").read_text())
    metrics = {"teacher_fp32": _flat_metrics(evals)}
    path = build_package(
        demo.out / "package" / "egovlpv2_small_teacher",
        config=cfg,
        graphs=graphs,
        selected={g: ("fp32", reason) for g in GRAPH_NAMES},
        tokenizer=demo.teacher_dir / "tokenizer.json",
        preprocessing=Preprocessing.from_config(cfg, clip_seconds=2.0, stride_seconds=1.0),
        source_checkpoint=demo.teacher_dir / "teacher.pt",
        metrics=metrics,
        overwrite=True,
    )
    log.info("package %s", path)
    print(verify_package(path).summary())


def _flat_metrics(evals: dict[str, Any]) -> dict[str, float]:
    out = {f"egomcq_{s}_{k}": v for s, acc in evals["egomcq"].items() for k, v in acc.items()}
    out.update({f"t2v_{k}": v for k, v in evals["retrieval"].items()})
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp demo``; returns the exit status."""
    p = argparse.ArgumentParser(prog="egovlp demo", description=__doc__)
    p.add_argument("--out", default="outputs/demo", help="where every stage writes (reused on the next run)")
    p.add_argument("--videos", type=int, default=40, help="synthetic videos to render")
    p.add_argument("--steps", type=int, default=150, help="teacher pre-training steps")
    p.add_argument("--batch-size", type=int, default=16, help="clips per step before scene negatives")
    p.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=False, help="delete --out first")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, videos=args.videos, steps=args.steps, batch_size=args.batch_size)
    from egovlpv2_edge._demo_runtime import stage_runtime, write_report

    stages = [
        ("synthetic data", "1-2 min", demo.data / "meta.json", lambda: stage_data(demo)),
        (
            "teacher pre-training",
            f"{max(1, demo.steps * 4 // 60)} min",
            demo.teacher_dir / "teacher.pt",
            lambda: stage_teacher(demo),
        ),
        ("zero-shot evaluation", "2 min", out / "eval.json", lambda: stage_eval(demo)),
        ("ONNX export", "1 min", out / "graphs" / "export.json", lambda: stage_export(demo)),
        ("model package", "10 s", out / "package" / "egovlpv2_small_teacher.egopkg", lambda: stage_package(demo)),
        ("on-device index and queries", "30 s", out / "runtime.json", lambda: stage_runtime(demo)),
    ]
    t0 = time.perf_counter()
    for i, (name, estimate, done, fn) in enumerate(stages, start=1):
        _stage(demo, i, len(stages), name, estimate, done, fn)
    write_report(demo, time.perf_counter() - t0)
    return 0

"""``egovlp demo``: the main job end to end on synthetic egocentric footage, stage by stage.

data -> teacher pre-training -> QA fine-tuning -> distillation into the edge student -> ONNX export (student and
teacher) -> model packages -> quantization (per-graph precision by measurement) -> accuracy of every stage ->
a generated multi-minute "day" of first-person video streamed through the runtime SDK -> searches and questions,
then a report (``report.md``) and pictures. Each stage writes its outputs under ``--out`` and is skipped when its
marker file exists, so a second run takes seconds; ``--stage NAME`` runs one stage again (and marks the stages
after it stale). The schedules are flags; the report lists the ones used.

The demo is the application layer: it imports training, compression and the runtime inside the stages and calls
their public entry points with arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("egovlp.demo")


@dataclass
class Demo:
    """Settings (the schedules) of one demo run; every path is under ``out``."""

    out: Path
    videos: int = 60  # synthetic videos rendered
    preset: str = "egovlpv2_small"  # teacher preset
    student_preset: str = "egovlpv2_edge"  # student preset
    student_model: dict[str, Any] = field(default_factory=dict)  # overrides merged over the student preset
    steps: int = 400  # teacher pre-training steps
    # share of them that trains the dual encoders alone (EgoNCE) before MLM and VTM join: the fused side does not
    # learn within a CPU demo's budget, so nearly all of it goes to the dual encoders that retrieval uses
    fusion_start: float = 0.95
    reverse_weight: float = 1.0  # time-reversal negatives for verbs with a reverse (pick up / put down)
    video_lr_mult: float = 5.0  # the video encoder starts from scratch: 5x the (pretrained) text encoder's rate
    # 0 locks the pretrained text encoder (the video encoder aligns to a fixed text space; a dual step costs about
    # two thirds as much, so the same minutes hold more steps)
    text_lr_mult: float = 0.0
    batch_size: int = 16  # pre-training and distillation clips per step (before scene negatives)
    qa_steps: int = 40  # QA fine-tuning steps
    qa_batch_size: int = 16
    distill_steps: int = 250  # distillation steps
    # share of them with the dual terms alone (EgoNCE, affinity, embeddings) before the fused terms and the QA
    # head's join: the student's video encoder starts from scratch and learns from the dual terms, 3x cheaper
    distill_fused_start: float = 0.9
    quant_clips: int = 32  # calibration + held-out clips of the quantization measurement
    quant_methods: tuple[str, ...] = ("nncf", "ort_dynamic", "fp16")  # variants measured against FP32
    eval_limit: int = 120  # EgoMCQ and QA questions evaluated per stage
    day_minutes: float = 5.0  # length of the streamed "day" video
    seed: int = 0

    def path(self, name: str) -> Path:
        """``out/name``."""
        return self.out / name

    def schedules(self) -> dict[str, Any]:
        """The settings that decide the run, for the report."""
        return {k: v for k, v in asdict(self).items() if k != "out"}


@dataclass(frozen=True)
class Stage:
    """One demo stage: name (``--stage``), what it does, its marker file and how long it should take."""

    name: str
    title: str
    marker: str  # relative to out; the stage is done when it exists
    run: Callable[[Demo], None]
    estimate: Callable[[Demo], float]  # seconds on a 2-core CPU


def _scale(demo: Demo) -> float:
    """Cost of a training step relative to the default teacher (the tiny test preset is far cheaper)."""
    return 0.05 if demo.preset == "egovlpv2_test" else 1.0


def _distill_estimate(demo: Demo) -> float:
    """Seconds of distillation: dual-only steps cost about a quarter of full ones on this CPU; the student's QA
    head warm start and its gates-off QA head (one pass over the QA train questions each) about 25 s each."""
    dual = round(demo.distill_fused_start * demo.distill_steps)
    return (0.6 * dual + 2.5 * (demo.distill_steps - dual)) * _scale(demo) + 15 + 50 * _scale(demo)


def _pretrain_estimate(demo: Demo) -> float:
    """Seconds of teacher pre-training: dual-only steps cost about a third of full ones on this CPU."""
    dual = round(demo.fusion_start * demo.steps)
    locked = demo.text_lr_mult == 0
    step = (1.0 if locked else 1.4) + 0.15 * (demo.reverse_weight > 0)
    return (step * dual + (2.8 if locked else 4.3) * (demo.steps - dual)) * _scale(demo)


def stages() -> list[Stage]:
    """The demo's stages in order."""
    from egovlpv2_edge import _demo_eval as ev
    from egovlpv2_edge import _demo_runtime as rt
    from egovlpv2_edge import _demo_train as tr

    s = _scale
    return [
        Stage("data", "synthetic egocentric data", "data/meta.json", tr.stage_data, lambda d: 1.5 * d.videos + 5),
        Stage("pretrain", "teacher pre-training", "teacher/teacher.pt", tr.stage_teacher, _pretrain_estimate),
        # + the gates-off QA head: one pass over the QA train questions (about 35 s)
        Stage("qa", "teacher QA fine-tuning", "qa/finetuned.pt", tr.stage_qa, lambda d: 1.6 * d.qa_steps * s(d) + 60),
        Stage(
            "distill",
            "distillation into the edge student",
            "student/student.pt",
            tr.stage_distill,
            _distill_estimate,
        ),  # fmt: skip
        Stage(
            "export",
            "ONNX export (student and teacher)",
            "graphs/export.json",
            tr.stage_export,
            lambda d: 60 * s(d) + 10,
        ),  # fmt: skip
        Stage("package", "model packages (build + verify)", "packages/fp32.json", tr.stage_package, lambda d: 10),
        Stage(
            "quantize",
            "quantization (per-graph precision by measurement)",
            "packages/quantize.json",
            tr.stage_quantize,
            lambda d: 3 * d.quant_clips + 20,
        ),  # fmt: skip
        Stage(
            "evaluate",
            "accuracy of every stage (teacher / student / quantized)",
            "eval.json",
            ev.stage_evaluate,
            lambda d: 0.6 * d.eval_limit * (1 + s(d)) + 20,
        ),  # fmt: skip
        Stage(
            "stream",
            "stream a day of video through the runtime SDK",
            "stream/stream.json",
            rt.stage_stream,
            lambda d: 8 * d.day_minutes + 10,
        ),  # fmt: skip
        Stage("ask", "sample searches and questions", "answers.json", rt.stage_ask, lambda d: 15),
    ]


def _fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _load_timings(demo: Demo) -> dict[str, float]:
    path = demo.path("timings.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def run_stages(demo: Demo, only: list[str]) -> dict[str, float]:
    """Run the stages that are not done; with ``only``, run those stages again (and any missing stage before them),
    mark the stages after them stale and stop. Returns every stage's seconds (reused ones from earlier runs)."""
    all_stages = stages()
    timings = _load_timings(demo)
    if only:
        first = min(i for i, st in enumerate(all_stages) if st.name in only)
        for st in all_stages[first:]:  # a re-run makes what follows stale: it runs again next time, from the start
            if st.name not in only:  # (its last.pt was trained on the outputs the re-run replaces)
                demo.path(st.marker).unlink(missing_ok=True)
                demo.path(st.marker).parent.joinpath("last.pt").unlink(missing_ok=True)
    last = max((i for i, st in enumerate(all_stages) if st.name in only), default=len(all_stages) - 1)
    todo = [st for st in all_stages[: last + 1] if st.name in only or not demo.path(st.marker).exists()]
    saved = demo.path("settings.json")
    same = saved.is_file() and json.loads(saved.read_text()) == json.loads(json.dumps(demo.schedules()))
    for st in todo:  # a training stage cut short resumes from its last.pt, unless it runs again or settings changed
        if st.name in only or not same:
            demo.path(st.marker).parent.joinpath("last.pt").unlink(missing_ok=True)
    for k, st in enumerate(all_stages[: last + 1], start=1):
        head = f"[{k}/{len(all_stages)}] {st.name}: {st.title}"
        if st not in todo:
            print(f"{head}: reusing {demo.path(st.marker)}", flush=True)
            continue
        left = sum(x.estimate(demo) for x in todo[todo.index(st) :])
        print(f"{head} (about {_fmt(st.estimate(demo))}; about {_fmt(left)} left in the demo) ...", flush=True)
        t0 = time.perf_counter()
        st.run(demo)
        timings[st.name] = time.perf_counter() - t0
        demo.path("timings.json").write_text(json.dumps(timings, indent=2))
        demo.path("settings.json").write_text(json.dumps(demo.schedules(), indent=2))
        print(f"{head}: done in {_fmt(timings[st.name])}", flush=True)
    return timings


def _parser() -> argparse.ArgumentParser:
    d = Demo(Path("outputs/demo"))
    p = argparse.ArgumentParser(prog="egovlp demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/demo", help="where every stage writes (reused on the next run)")
    p.add_argument("--stage", action="append", default=[], choices=[s.name for s in stages()],
                   help="run this stage again, alone (repeatable); the stages after it are marked stale and run on "
                   "the next plain run")  # fmt: skip
    p.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=False, help="delete --out first")
    g = p.add_argument_group("schedules (defaults sized for about 25 min on a 2-core CPU)")
    g.add_argument("--videos", type=int, default=d.videos, help="synthetic videos to render (%(default)s)")
    g.add_argument("--preset", default=d.preset, help="teacher preset (%(default)s; egovlpv2_test for a smoke run)")
    g.add_argument("--student-preset", default=d.student_preset, help="student preset (%(default)s)")
    g.add_argument("--student-model", default="{}", help="JSON overrides merged over the student preset")
    g.add_argument("--steps", type=int, default=d.steps, help="teacher pre-training steps (%(default)s)")
    g.add_argument(
        "--fusion-start", type=float, default=d.fusion_start,
        help="share of the pre-training steps with EgoNCE alone before MLM and VTM join (%(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--reverse-weight", type=float, default=d.reverse_weight,
        help="weight of the time-reversal negatives in pre-training (%(default)s; 0 turns them off)",
    )  # fmt: skip
    g.add_argument(
        "--text-lr-mult", type=float, default=d.text_lr_mult,
        help="text encoder's learning-rate multiplier in pre-training (%(default)s: locked as loaded)",
    )  # fmt: skip
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="pre-training/distillation batch (%(default)s)")
    g.add_argument("--qa-steps", type=int, default=d.qa_steps, help="QA fine-tuning steps (%(default)s)")
    g.add_argument("--qa-batch-size", type=int, default=d.qa_batch_size, help="QA fine-tuning batch (%(default)s)")
    g.add_argument("--distill-steps", type=int, default=d.distill_steps, help="distillation steps (%(default)s)")
    g.add_argument(
        "--distill-fused-start", type=float, default=d.distill_fused_start,
        help="share of the distillation steps with the dual terms alone before the fused ones join (%(default)s)",
    )  # fmt: skip
    g.add_argument("--quant-clips", type=int, default=d.quant_clips, help="quantization clips (%(default)s)")
    g.add_argument("--quant-methods", nargs="+", default=list(d.quant_methods),
                   help="quantization variants measured (see egovlp compress quantize --help)")  # fmt: skip
    g.add_argument("--eval-limit", type=int, default=d.eval_limit, help="questions evaluated per stage (%(default)s)")
    g.add_argument("--day-minutes", type=float, default=d.day_minutes, help="streamed video length (%(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp demo``; returns the exit status."""
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(
        out, videos=args.videos, preset=args.preset, student_preset=args.student_preset,
        student_model=json.loads(args.student_model), steps=args.steps, fusion_start=args.fusion_start,
        reverse_weight=args.reverse_weight, text_lr_mult=args.text_lr_mult, batch_size=args.batch_size,
        qa_steps=args.qa_steps, qa_batch_size=args.qa_batch_size, distill_steps=args.distill_steps,
        distill_fused_start=args.distill_fused_start,
        quant_clips=args.quant_clips, quant_methods=tuple(args.quant_methods), eval_limit=args.eval_limit,
        day_minutes=args.day_minutes, seed=args.seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    timings = run_stages(demo, args.stage)
    stale = [st.name for st in stages() if not demo.path(st.marker).exists()]
    if stale:
        print(f"stages {', '.join(stale)} are stale after --stage; run `egovlp demo` again to finish and report")
        return 0
    from egovlpv2_edge._demo_report import write_report

    write_report(demo, timings, time.perf_counter() - t0)
    return 0

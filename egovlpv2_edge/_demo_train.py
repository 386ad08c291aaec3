"""The demo's model stages: data, teacher pre-training, QA fine-tuning, distillation, export, packages, quantization.

Each stage calls a command's ``main(argv)`` or a public function with arguments, writes into a temporary name or
its run folder and leaves its marker file last, so an interrupted stage runs again on the next demo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

HOLDOUT = ("open:green_box", "cut:bread", "pick_up:red_cup")  # verb:noun pairs kept out of train
MODELS = ("teacher", "student")  # exported and packaged side by side


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with exit status {status} (see the messages above)")


def stage_data(demo: Any) -> None:
    """Render the synthetic egocentric dataset (three verb-noun pairs held out for a compositional split)."""
    from egovlpv2_edge.training.data.cli import main as data_main

    data, tmp = demo.path("data"), demo.path("data.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    args = ["synth", "--out", str(tmp), "--videos", str(demo.videos), "--seed", str(demo.seed)]
    _check(data_main([*args, "--holdout-pairs", *HOLDOUT]), "egovlp data synth")
    tmp.rename(data)  # only a finished dataset gets the final name


def stage_teacher(demo: Any) -> None:
    """Pre-train the teacher (EgoNCE + MLM + VTM) on the train split: ``egovlp train pretrain``."""
    from egovlpv2_edge.training.cli import main as train_main

    overrides = [
        f"data={demo.path('data')}", f"out={demo.path('teacher')}", f"preset={demo.preset}", f"seed={demo.seed}",
        f"batch_size={demo.batch_size}", f"max_steps={demo.steps}", "num_workers=1", "log_every=10", "ckpt_every=50",
        f"loss.fusion_start={demo.fusion_start}", f"optim.video_lr_mult={demo.video_lr_mult}",
        f"loss.reverse_weight={demo.reverse_weight}", f"optim.text_lr_mult={demo.text_lr_mult}",
    ]  # fmt: skip
    _check(train_main(["pretrain", *overrides]), "egovlp train pretrain")


def stage_qa(demo: Any) -> None:
    """Fine-tune the teacher for QA (fused answer head + multiple-choice VTM): ``egovlp train finetune --task qa``.

    Only the cross-modal parameters train (``qa.train=fusion``): the dual encoders the student learns retrieval from
    stay as pre-trained, and each window's lower layers run once for all its questions instead of once per step.
    """
    from egovlpv2_edge.training.cli import main as train_main

    overrides = [
        f"data={demo.path('data')}", f"out={demo.path('qa')}", f"batch_size={demo.qa_batch_size}",
        f"max_steps={demo.qa_steps}", f"seed={demo.seed}", "num_workers=1", "log_every=10", "qa.train=fusion",
    ]  # fmt: skip
    init = str(demo.path("teacher") / "teacher.pt")
    _check(train_main(["finetune", "--task", "qa", "--init", init, *overrides]), "egovlp train finetune")


def stage_distill(demo: Any) -> None:
    """Distil the QA-tuned teacher into the edge student (fused layers kept): ``egovlp compress distill``."""
    from egovlpv2_edge.compress.cli import main as compress_main

    args = [
        "distill", "--teacher", str(demo.path("qa") / "finetuned.pt"), "--data", str(demo.path("data")),
        "--out", str(demo.path("student")), "--student-preset", demo.student_preset,
        f"max_steps={demo.distill_steps}", f"batch_size={demo.batch_size}", f"seed={demo.seed}",
        f"loss.fused_start={demo.distill_fused_start}", f"optim.video_lr_mult={demo.video_lr_mult}",
        "num_workers=1", "log_every=10", "ckpt_every=50",
    ]  # fmt: skip
    if demo.student_model:
        args.append(f"model={json.dumps(demo.student_model)}")
    _check(compress_main(args), "egovlp compress distill")


def checkpoint(demo: Any, model: str) -> Path:
    """The checkpoint behind ``model`` (``teacher``: the QA-tuned teacher, ``student``: the distilled student)."""
    return demo.path("qa") / "finetuned.pt" if model == "teacher" else demo.path("student") / "student.pt"


def stage_export(demo: Any) -> None:
    """Export the five gate-switch graphs of student and teacher to ONNX, each validated against PyTorch; the fused
    graph carries the checkpoint's QA head (``qa_logits``), its answers written beside as ``answer_vocabs.json``, and
    the gates-off QA head as ``qa_dual.json``."""
    from egovlpv2_edge.compress.export import checkpoint_dual_qa_head, checkpoint_qa_head, export_all, write_qa_files
    from egovlpv2_edge.training.tasks.checkpoint import load_backbone

    tmp = demo.path("graphs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    report: dict[str, Any] = {}
    for name in MODELS:
        model, _ = load_backbone(checkpoint(demo, name))
        qa = checkpoint_qa_head(checkpoint(demo, name))  # the teacher's fine-tuned head, the student's distilled one
        dual = checkpoint_dual_qa_head(checkpoint(demo, name), model.cfg.heads.embed_dim)
        exported = export_all(model, tmp / name, qa_head=None if qa is None else qa.head)
        write_qa_files(tmp / name, qa, dual)
        report[name] = {g: {"max_abs_diff": e.max_abs_diff, "seconds": e.seconds} for g, e in exported.items()}
        report[name]["qa_head"] = {"answers": 0 if qa is None else len(qa.answers)}
        report[name]["qa_dual_head"] = {"answers": 0 if dual is None else dual.head.num_answers}
    (tmp / "export.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(demo.path("graphs"), ignore_errors=True)
    tmp.rename(demo.path("graphs"))


def _qa_vocab(path: Path, graphs: Path) -> dict[str, list[str]]:
    """The answers the export wrote beside a fused graph with a QA head, else the checkpoint's (without a head
    the package keeps them for reference: ``ask`` then needs choices)."""
    import torch

    from egovlpv2_edge._package_qa import ANSWER_VOCABS_FILE, read_answer_vocabs

    if (graphs / ANSWER_VOCABS_FILE).is_file():
        return read_answer_vocabs(graphs / ANSWER_VOCABS_FILE)

    task = torch.load(path, map_location="cpu", weights_only=True).get("task") or {}
    answers = (task.get("vocab") or {}).get("answers")
    return {"qa": list(answers)} if answers else {}


def stage_package(demo: Any) -> None:
    """Build and verify an FP32 package per model (directory and single-file archive)."""
    import torch

    from egovlpv2_edge._package_qa import DUAL_QA_FILE, DUAL_QA_HEAD
    from egovlpv2_edge.config import ModelConfig
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import Preprocessing, build_package, verify_package

    out: dict[str, Any] = {}
    for name in MODELS:
        ckpt = checkpoint(demo, name)
        cfg = ModelConfig.from_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["config"])
        dual = demo.path("graphs") / name / DUAL_QA_FILE
        path = build_package(
            demo.path("packages") / f"{name}_fp32",
            config=cfg,
            graphs={g: {"fp32": demo.path("graphs") / name / f"{g}.onnx"} for g in GRAPH_NAMES},
            selected={g: ("fp32", "fp32: the exported reference") for g in GRAPH_NAMES},
            tokenizer=ckpt.parent / "tokenizer.json",
            preprocessing=Preprocessing.from_config(cfg, clip_seconds=2.0, stride_seconds=1.0),
            answer_vocabs=_qa_vocab(ckpt, demo.path("graphs") / name),
            heads={DUAL_QA_HEAD: dual} if dual.is_file() else None,
            source_checkpoint=ckpt,
            overwrite=True,
        )
        report = verify_package(path)
        print(report.summary())
        out[name] = {"package": str(path), "archive_bytes": _archive_size(path), "preset": cfg.name}
    (demo.path("packages") / "fp32.json").write_text(json.dumps(out, indent=2))


def _archive_size(package_dir: Path) -> int:
    archive = package_dir.with_name(package_dir.name + ".egopkg")
    return archive.stat().st_size if archive.is_file() else sum(p.stat().st_size for p in package_dir.rglob("*"))


def stage_quantize(demo: Any) -> None:
    """INT8/FP16 variants of the student's graphs, each graph's precision by measurement: ``egovlp compress quantize``;
    then TensorRT execution-provider settings into the final package (``egovlp compress trt``, no GPU needed)."""
    from egovlpv2_edge.compress.cli import main as compress_main
    from egovlpv2_edge.package import verify_package

    pk = demo.path("packages")
    report = pk / "quantize_measurements.json"
    args = [
        "quantize", "--package", str(pk / "student_fp32"), "--calibration", str(demo.path("data")),
        "--out", str(pk / "student_quantized"), "--max-clips", str(demo.quant_clips), "--threads", "2",
        "--report", str(report), "--overwrite", "--methods", *demo.quant_methods,
    ]  # fmt: skip
    _check(compress_main(args), "egovlp compress quantize")
    trt = ["trt", "--package", str(pk / "student_quantized"), "--out", str(pk / "student_edge"), "--overwrite"]
    _check(compress_main(trt), "egovlp compress trt")
    print(verify_package(pk / "student_edge").summary())
    measured = json.loads(report.read_text())
    out = {
        "package": str(pk / "student_edge"),
        "archive_bytes": _archive_size(pk / "student_edge"),
        "measured_on": measured["measured_on"],
        "selected": {g: {"precision": m["selected"], "reason": m["reason"]} for g, m in measured["graphs"].items()},
    }
    (pk / "quantize.json").write_text(json.dumps(out, indent=2))

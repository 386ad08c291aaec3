"""The end-to-end demo: every stage on tiny settings (about 1.5 min on 2 cores), a second run that reuses them all,
a single stage re-run, and the full-size demo (marked slow: about 25 min, run with ``pytest -m slow``)."""

from __future__ import annotations

import json
import time

import pytest

from egovlpv2_edge._demo import main, stages

TINY = [
    "--videos", "6", "--preset", "egovlpv2_test", "--student-preset", "egovlpv2_test",
    "--student-model", json.dumps({"video": {"width": 16, "heads": 2}}), "--steps", "3", "--fusion-start", "0.34",
    "--batch-size", "8", "--qa-steps", "3", "--qa-batch-size", "4", "--distill-steps", "2", "--quant-clips", "8",
    "--distill-fused-start", "0.5", "--quant-methods", "ort_dynamic", "--eval-limit", "8", "--day-minutes", "1",
]  # fmt: skip
OUTPUTS = [
    "data/qa.json", "teacher/curves.png", "qa/curves.png", "student/curves.png", "graphs/teacher/fused_upper.onnx",
    "graphs/student/video_lower.onnx", "packages/teacher_fp32.egopkg", "packages/student_fp32.egopkg",
    "packages/student_edge.egopkg", "packages/student_edge/providers/tensorrt.json", "stream/day.mp4",
    "retrieved_moments.png", "report.md",
]  # fmt: skip


def _check_outputs(out) -> None:
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    ev = json.loads((out / "eval.json").read_text())
    for key in ("teacher", "student", "student_int8"):
        assert set(ev[key]["egomcq"]["ensemble"]) == {"inter", "intra"} and ev[key]["qa_mc"]["n"] > 0
        assert ev[key]["qa_head"]["n"] == ev[key]["qa_mc"]["n"], "every package answers with its QA head"
        assert ev[key]["qa_dual"]["n"] == ev[key]["qa_mc"]["n"], "... and with its gates-off QA head"
        assert ev[key]["qa_dual_mc"]["n"] == ev[key]["qa_mc"]["n"], "... also restricted to the choices"
        assert 0 <= ev[key]["recall"]["R@1"] <= ev[key]["recall"]["R@10"] <= 100
    assert ev["teacher_qa_head"]["rows"], "the QA head of the tuned teacher is evaluated"
    stream = json.loads((out / "stream/stream.json").read_text())
    assert stream["clips"] >= 50 and stream["clips_dropped"] == 0 and stream["realtime_factor"] > 1
    answers = json.loads((out / "answers.json").read_text())
    assert len(answers["searches"]) == 4 and all(s["moments"] for s in answers["searches"])
    assert answers["questions"] and all(q["answer"] in q["choices"] for q in answers["questions"])
    vocab = json.loads((out / "packages/student_edge/manifest.json").read_text())["answer_vocabs"]["qa"]
    assert all(q["free"]["answer"] in vocab for q in answers["questions"]), "ask without choices: the QA head"
    assert all(q["free"]["head"] == "dual" for q in answers["questions"]), "the gates-off head answers by default"
    assert all(q["head"] == "dual" for q in answers["questions"]), "... also the choices, all among its answers"
    assert answers["qa_head"].startswith("the package's gates-off QA head (on the dual embeddings) answered")
    assert "qa_dual" in json.loads((out / "packages/student_edge/manifest.json").read_text())["heads"]
    report = (out / "report.md").read_text()
    for text in ("Schedules used: videos=6", "edge student, quantized", "real-time factor", "curves.png"):
        assert text in report, text


def test_tiny_demo_runs_every_stage_then_reuses_them(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), *TINY]) == 0
    first = capsys.readouterr().out
    n = len(stages())
    assert f"[{n}/{n}] ask: sample searches and questions: done" in first and "left in the demo" in first
    _check_outputs(out)
    t0 = time.perf_counter()
    assert main(["--out", str(out), *TINY]) == 0
    assert time.perf_counter() - t0 < 10, "a finished demo is reused, not re-run"
    assert capsys.readouterr().out.count("reusing") == n
    (out / "student" / "last.pt").write_bytes(b"distilled from the QA checkpoint the re-run replaces")
    assert main(["--out", str(out), *TINY, "--stage", "qa"]) == 0  # one stage alone; the ones after turn stale
    alone = capsys.readouterr().out
    assert "teacher QA fine-tuning: done" in alone and "distill, export, package" in alone and "are stale" in alone
    assert not (out / "answers.json").exists() and not (out / "student" / "student.pt").exists()
    assert not (out / "student" / "last.pt").exists(), "a stale stage starts over instead of resuming"
    assert main(["--out", str(out), *TINY]) == 0  # the plain run finishes what turned stale
    again = capsys.readouterr().out
    assert "ask: sample searches and questions: done" in again and again.count("reusing") == 3
    _check_outputs(out)


@pytest.mark.slow
def test_full_demo_default_schedules(tmp_path) -> None:
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert main(["--out", str(out)]) == 0
    _check_outputs(out)
    assert time.perf_counter() - t0 < 25 * 60, "the default demo fits 25 minutes on a 2-core CPU"

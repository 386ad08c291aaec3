"""The demo's report: accuracy per stage, package sizes, speed per stage, streaming, answers; ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCORINGS = ("dual", "fusion", "ensemble")
ROWS = (("teacher", "teacher (QA-tuned), FP32"), ("student", "edge student, FP32"),
        ("student_int8", "edge student, quantized"))  # fmt: skip


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(row: dict[str, Any], key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "-"  # absent from an eval.json of an older run


def _accuracy(ev: dict[str, Any]) -> list[str]:
    n = ev["teacher"]["egomcq"]["counts"]
    lines = [
        f"Accuracy per stage (held-out data; EgoMCQ {n['inter']} inter / {n['intra']} intra questions, chance 20%; "
        f"QA multiple choice by VTM over {ev['teacher']['qa_mc']['n']} test questions, chance "
        f"{ev['teacher']['qa_mc']['chance']:.0f}%; text-to-video over {ev['teacher']['recall']['clips']} test clips):",
        "",
        "| stage | EgoMCQ inter | EgoMCQ intra | QA (MC, VTM) | QA (MC, gates-off head) | QA (fused head) "
        "| QA (gates-off head) | R@1 | R@5 | R@10 | params M | GMACs/clip | graphs MB | ms/clip b1 | ms/clip b8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, name in ROWS:
        r = ev[key]
        m, rec, lat = r["egomcq"]["ensemble"], r["recall"], r["latency"]
        head = f"{r['qa_head']['accuracy']:.1f}" if r.get("qa_head") else "-"
        dual = f"{r['qa_dual']['accuracy']:.1f}" if r.get("qa_dual") else "-"
        dual_mc = f"{r['qa_dual_mc']['accuracy']:.1f}" if r.get("qa_dual_mc") else "-"
        lines.append(
            f"| {name} | {m['inter']:.1f} | {m['intra']:.1f} | {r['qa_mc']['accuracy']:.1f} | {dual_mc} | {head} | "
            f"{dual} | "
            f"{rec['R@1']:.1f} | {rec['R@5']:.1f} | {rec['R@10']:.1f} | {_num(r, 'params_m', 1)} | "
            f"{_num(r, 'gmacs_per_clip', 3)} | {r['graph_bytes'] / 1e6:.1f} | "
            f"{lat['batch1_ms_per_clip']:.2f} | {lat['batch8_ms_per_clip']:.2f} |"
        )
    lines += ["", "EgoMCQ by scoring, inter/intra (the table shows the ensemble):"]
    for key, name in ROWS:
        mcq = ev[key]["egomcq"]
        lines.append(f"- {name}: " + ", ".join(f"{s} {mcq[s]['inter']:.1f}/{mcq[s]['intra']:.1f}" for s in SCORINGS))
    head = ev["teacher_qa_head"]
    lines += ["", "QA (fused head): the package's QA head (fused graph's qa_logits) without choices, same questions; "
              "QA (gates-off head): the package's heads/qa_dual.json on the clip's and the question's dual "
              "embeddings (no fused pass), same questions; QA (MC, gates-off head): that head's answers restricted "
              "to each question's choices.",
              f"QA answer head of the QA-tuned teacher in PyTorch ({head['task']}):"]  # fmt: skip
    lines += [f"- {row}: " + ", ".join(f"{k} {v:.1f}" for k, v in vals.items()) for row, vals in head["rows"].items()]
    return lines


def _packages(demo: Any, ev: dict[str, Any]) -> list[str]:
    fp32 = _read(demo.path("packages/fp32.json"))
    q = _read(demo.path("packages/quantize.json"))
    lines = ["", "Packages (archive size; the quantized package keeps FP32 beside each chosen variant):"]
    lines += [f"- {name}: {v['package']} ({v['archive_bytes'] / 2**20:.1f} MiB)" for name, v in fp32.items()]
    lines.append(f"- quantized student + TensorRT settings: {q['package']} ({q['archive_bytes'] / 2**20:.1f} MiB)")
    prec = ev["student_int8"]["precision"]
    lines += ["", "Quantized student graphs: " + ", ".join(f"{g} {p}" for g, p in prec.items())]
    lines += ["", f"Per-graph precision of the quantized student (measured on {q['measured_on']}):"]
    lines += [f"- {g}: {s['reason']}" for g, s in q["selected"].items()]
    return lines


def _stream(demo: Any) -> list[str]:
    s = _read(demo.path("stream/stream.json"))
    a = _read(demo.path("answers.json"))
    e2e = s["latency_ms"].get("end_to_end", {})
    lines = [
        "",
        f"Streaming ({s['package']}): {s['video_seconds'] / 60:.1f} min of stitched first-person video "
        f"({len(s['pieces'])} videos) indexed in {s['wall_seconds']:.1f} s: real-time factor "
        f"{s['realtime_factor']:.1f}x; {s['clips']} clips ({s['clips_per_s']:.1f}/s), dropped {s['frames_dropped']} "
        f"frames and {s['clips_dropped']} clips; end-to-end latency p50 {e2e.get('p50', float('nan')):.0f} ms, "
        f"p95 {e2e.get('p95', float('nan')):.0f} ms; RSS {s['rss_mib']:.0f} MiB (the demo's own process: after "
        f"the training stages it also holds PyTorch); providers {s['providers']}",
        "",
        "Searches (gates off; a hit overlaps a real occurrence of the narration in the day):",
    ]
    for r in a["searches"]:
        top = r["moments"][0] if r["moments"] else {"start": float("nan"), "end": float("nan")}
        lines.append(f'- "{r["query"]}" ({r["occurrences"]} occurrences): top {top["start"]:.0f}-{top["end"]:.0f} s, '
                     f"hit@1 {r['hit_at_1']}, hit@5 {r['hit_at_k']}, {r['search_ms']:.1f} ms")  # fmt: skip
    lines += ["", "Questions (ask with and without choices over the best-matching clips; the head that answered in "
              "brackets: dual = the gates-off QA head on stored embeddings, vtm = the fused VTM head on "
              "\"question choice\", fused = the fused graph's qa_logits):"]  # fmt: skip
    for r in a["questions"]:
        verdict = "right" if r["correct"] else f"wrong (truth: {r['truth']})"
        by = f" [{r['head']}]" if r.get("head") else ""
        line = (f'- "{r["question"]}" -> {r["answer"]}{by} ({100 * r["confidence"]:.0f}%), {verdict}, '
                f"{r['ask_ms']:.0f} ms")  # fmt: skip
        if r.get("free"):
            f = r["free"]
            line += (f"; without choices -> {f['answer']} ({100 * f['confidence']:.0f}%), "
                     f"{'right' if f['correct'] else 'wrong'}, {f['ask_ms']:.0f} ms")  # fmt: skip
        lines.append(line)
    lines.append(f"- ask without choices: {a['qa_head']}")
    return lines


def write_report(demo: Any, timings: dict[str, float], seconds: float) -> None:
    """Print the run's report and write it to ``report.md``."""
    settings = _read(demo.path("settings.json")) or demo.schedules()
    ev = _read(demo.path("eval.json"))
    lines = [f"# egovlp demo report ({demo.out})", "", "Schedules used: " + ", ".join(
        f"{k}={v}" for k, v in settings.items()), ""]  # fmt: skip
    lines += _accuracy(ev) + _packages(demo, ev) + _stream(demo)
    curves = [demo.path(p) for p in ("teacher/curves.png", "qa/curves.png", "student/curves.png")]
    lines += [
        "",
        "Pictures: training curves " + ", ".join(str(c) for c in curves) + f"; moments and answers "
        f"{demo.path('retrieved_moments.png')}",
        "Stage times (s, from the run that produced each output): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
        f"This run: {seconds:.0f} s",
    ]
    text = "\n".join(lines)
    demo.path("report.md").write_text(text + "\n")
    print(text)

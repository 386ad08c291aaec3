"""Quantization: the selection rule (injected measurements), variants close to FP32, real-clip calibration, and one
end-to-end ``egovlp compress quantize`` run whose package records every measured precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("cv2")

from egovlpv2_edge.compress._measure import SelectionRule, measure_drift, select_precision  # noqa: E402
from egovlpv2_edge.graphs import graph_specs  # noqa: E402
from egovlpv2_edge.package import PrecisionCandidate  # noqa: E402

from ._quant_helpers import fp32_package  # noqa: E402

RULE = SelectionRule(min_cosine=0.99, max_logit_diff=0.25, max_accuracy_drop=0.01, min_speedup=1.05)
FP32 = PrecisionCandidate("fp32", "export", {"batch1": 10.0, "batch8": 50.0})


def _cand(precision: str, b1: float, b8: float, cos: float = 0.999, **drift: float) -> PrecisionCandidate:
    return PrecisionCandidate(precision, "test", {"batch1": b1, "batch8": b8}, {"min_cosine": cos, **drift})


# ----- the rule, on injected measurements --------------------------------------------------------------------------
def test_rule_keeps_fp32_when_int8_is_slower() -> None:
    selected, reason, records = select_precision(FP32, [_cand("int8", 14.0, 70.0)], RULE)
    assert selected == "fp32"
    assert "int8 slower at batch1 (14 vs 10 ms" in reason
    assert [r.accepted for r in records] == [True, False]


def test_rule_keeps_fp32_when_int8_drifts_too_much() -> None:
    fast_but_wrong = [_cand("int8", 5.0, 20.0, cos=0.95), _cand("int8_dyn", 6.0, 25.0, max_logit_diff=0.6)]
    selected, reason, records = select_precision(FP32, fast_but_wrong, RULE)
    assert selected == "fp32"
    assert "min cosine 0.9500 < 0.99" in records[1].note and "logit max abs diff 0.6 > 0.25" in records[2].note
    assert reason.startswith("fp32 kept:")


def test_rule_rejects_an_accuracy_drop_and_a_slower_large_batch() -> None:
    cands = [_cand("int8", 5.0, 20.0, accuracy_drop=0.03), _cand("fp16", 8.0, 60.0)]
    selected, _, records = select_precision(FP32, cands, RULE)
    assert selected == "fp32"
    assert "accuracy drop 0.0300 > 0.01" in records[1].note
    assert "slower at batch8 (60 vs 50 ms)" in records[2].note


def test_rule_picks_the_fastest_candidate_that_passes() -> None:
    cands = [_cand("int8", 4.0, 20.0, cos=0.98), _cand("int8_dyn", 8.0, 40.0), _cand("int8_dyn_mm", 6.0, 30.0)]
    selected, reason, records = select_precision(FP32, cands, RULE)
    assert selected == "int8_dyn_mm"
    assert "1.67x faster at batch1" in reason
    assert [r.precision for r in records if r.accepted] == ["fp32", "int8_dyn", "int8_dyn_mm"]


def test_rule_rejects_a_candidate_that_did_not_run() -> None:
    broken = PrecisionCandidate("fp16", "fp16", note="failed to build: ValueError: no")
    selected, reason, _ = select_precision(FP32, [broken], RULE)
    assert selected == "fp32" and "fp16 failed to build" in reason


def test_drift_names_cosine_and_logits() -> None:
    spec = graph_specs(fp32_package()["model"].cfg)["fused_upper"]
    rng = np.random.default_rng(0)
    ref = [[rng.standard_normal(tuple(t.concrete(1))).astype(np.float32) for t in spec.outputs] for _ in range(3)]
    noisy = [[x + 0.5 if t.name == "vtm_logits" else x for t, x in zip(spec.outputs, row, strict=True)] for row in ref]
    drift = measure_drift(spec, ref, noisy)
    assert drift["max_logit_diff"] == pytest.approx(0.5, abs=1e-6)
    assert drift["max_abs_diff"] == pytest.approx(0.5, abs=1e-6)
    assert measure_drift(spec, ref, ref)["min_cosine"] == pytest.approx(1.0)


# ----- real data and real variants ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["videos", "egoclip"])
def test_calibration_decodes_real_clips_with_the_package_preprocessing(source: str) -> None:
    from egovlpv2_edge.compress.calibration import load_calibration
    from egovlpv2_edge.package import open_package

    pkg = open_package(fp32_package()["package"])
    pre = pkg.preprocessing
    data = load_calibration(fp32_package()[source], pre, pkg.tokenizer(), max_clips=6)
    assert data.frames.shape == (6, pre.frames_per_clip, 3, pre.img_size, pre.img_size)
    assert data.frames.std() > 0.1 and np.isfinite(data.frames).all()  # decoded pixels, normalised
    assert data.input_ids.shape == (6, pre.text_max_length) and data.attention_mask.sum() > 6


def test_calibration_without_texts_names_the_fix(tmp_path: Path) -> None:
    from egovlpv2_edge.compress.calibration import CalibrationError, load_calibration
    from egovlpv2_edge.package import open_package

    pkg = open_package(fp32_package()["package"])
    (tmp_path / "v.mp4").write_bytes((fp32_package()["videos"] / "v0.mp4").read_bytes())
    with pytest.raises(CalibrationError, match="texts.txt"):
        load_calibration(tmp_path, pkg.preprocessing, pkg.tokenizer())
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "nope", pkg.preprocessing, pkg.tokenizer())


@pytest.mark.parametrize("method", ["nncf", "ort_dynamic", "fp16"])
def test_variant_stays_close_to_fp32_and_keeps_the_interface(method: str, tmp_path: Path) -> None:
    from egovlpv2_edge.compress._measure import run_outputs
    from egovlpv2_edge.compress.calibration import graph_samples, load_calibration
    from egovlpv2_edge.compress.export import check_graph_io
    from egovlpv2_edge.compress.quantize import make_variant
    from egovlpv2_edge.package import open_package

    if method == "nncf":
        pytest.importorskip("nncf")
    pkg = open_package(fp32_package()["package"])
    specs = graph_specs(pkg.config)
    fp32 = {g: pkg.graph_path(g) for g in specs}
    data = load_calibration(fp32_package()["videos"], pkg.preprocessing, pkg.tokenizer(), max_clips=8)
    samples = graph_samples(data, fp32, specs)
    for graph in ("video_upper", "fused_upper"):
        out = make_variant(method, fp32[graph], tmp_path / f"{graph}.onnx", samples[graph][:6])
        check_graph_io(out, specs[graph])  # same names, dtypes and dynamic batch as FP32
        drift = measure_drift(
            specs[graph], run_outputs(fp32[graph], specs[graph], samples[graph]),
            run_outputs(out, specs[graph], samples[graph]),
        )  # fmt: skip
        assert drift["min_cosine"] > 0.95, (graph, drift)
        assert drift.get("max_logit_diff", 0.0) < 0.1, (graph, drift)


def test_unknown_method_lists_the_valid_ones(tmp_path: Path) -> None:
    from egovlpv2_edge.compress.quantize import QuantizationError, make_variant

    with pytest.raises(QuantizationError, match="valid: nncf, nncf_sym"):
        make_variant("int4", fp32_package()["package"] / "graphs" / "video_upper.fp32.onnx", tmp_path / "x.onnx", [])


# ----- end to end --------------------------------------------------------------------------------------------------
def test_cli_quantize_end_to_end_records_every_candidate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("nncf")
    from egovlpv2_edge.compress.cli import main
    from egovlpv2_edge.package import load_manifest, open_package, verify_package

    src = fp32_package()
    out = tmp_path / "tiny_int8"
    argv = ["quantize", "--package", str(src["package"]), "--calibration", str(src["egoclip"]), "--out", str(out),
            "--methods", "nncf", "ort_dynamic", "fp16", "--graphs", "video_upper", "fused_upper",
            "--threads", "1", "--max-clips", "6", "--keep", "all", "--report", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "speedup b1" in printed and "wrote package" in printed
    verify_package(out)
    m = load_manifest(out)
    for graph in ("video_upper", "fused_upper"):
        entry = m.graphs[graph]
        assert [c.precision for c in entry.candidates] == ["fp32", "int8", "int8_dyn", "fp16"]
        assert entry.measured_on.startswith("onnxruntime") and "1 thread" in entry.measured_on
        chosen = entry.candidate(entry.selected)
        assert chosen is not None and chosen.accepted and entry.reason
        for c in entry.candidates[1:]:
            assert set(c.latency_ms) == {"batch1", "batch8"} and c.drift["min_cosine"] > 0.9
            assert c.accepted == (c.precision == entry.selected) or c.accepted  # rejected ones say why
            assert c.accepted or c.note
        assert set(entry.files) == {"fp32", "int8", "int8_dyn", "fp16"}  # --keep all
    assert m.graphs["text_lower"].selected == "fp32" and "not tried" in m.graphs["text_lower"].reason
    assert m.graphs["text_lower"].candidates == ()
    assert (
        json.loads((tmp_path / "r.json").read_text())["graphs"]["fused_upper"]["candidates"][0]["precision"] == "fp32"
    )
    with open_package(out) as pkg:  # the selected files run with float32 inputs
        spec = graph_specs(pkg.config)["video_upper"]
        s = ort.InferenceSession(str(pkg.graph_paths["video_upper"]), providers=["CPUExecutionProvider"])
        feeds = {t.name: np.zeros(t.concrete(2), np.float32) for t in spec.inputs}  # tokens and the branch's share
        assert s.run(None, feeds)[0].shape == spec.outputs[0].concrete(2)


def test_package_rejects_a_selection_outside_the_measured_candidates(tmp_path: Path) -> None:
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import PackageError, build_package, open_package

    src = open_package(fp32_package()["package"])
    m = src.manifest
    args = {
        "config": src.config,
        "graphs": {g: {"fp32": src.graph_path(g)} for g in GRAPH_NAMES},
        "selected": {g: ("fp32", "ref") for g in GRAPH_NAMES},
        "tokenizer": src.root / m.tokenizer.file,
        "preprocessing": m.preprocessing,
    }
    with pytest.raises(PackageError, match="not among the measured candidates"):
        build_package(tmp_path / "bad", candidates={"video_upper": [_cand("int8", 1.0, 2.0)]}, **args)
    ok = build_package(tmp_path / "ok", candidates={"video_upper": [FP32, _cand("int8", 11.0, 60.0)]},
                       measured_on="here", archive=False, **args)  # fmt: skip
    entry = open_package(ok).manifest.graphs["video_upper"]
    assert entry.candidate("int8") == _cand("int8", 11.0, 60.0) and entry.measured_on == "here"


# ----- a fused graph with a QA head --------------------------------------------------------------------------------
def test_drift_gates_the_qa_logits_like_the_vtm_logits() -> None:
    spec = graph_specs(fp32_package()["model"].cfg, qa_answers=5)["fused_upper"]
    rng = np.random.default_rng(1)
    ref = [[rng.standard_normal(tuple(t.concrete(1))).astype(np.float32) for t in spec.outputs] for _ in range(3)]
    noisy = [[x + 0.5 if t.name == "qa_logits" else x for t, x in zip(spec.outputs, row, strict=True)] for row in ref]
    drift = measure_drift(spec, ref, noisy)
    assert drift["max_logit_diff"] == pytest.approx(0.5, abs=1e-6)
    selected, _, records = select_precision(FP32, [_cand("int8", 5.0, 25.0, **drift)], RULE)
    assert selected == "fp32" and "logit max abs diff 0.5 > 0.25" in records[1].note


def test_quantized_package_keeps_the_qa_head(tmp_path: Path) -> None:
    import torch

    from egovlpv2_edge.compress.export import export_all, write_answer_vocabs
    from egovlpv2_edge.compress.quantize import quantize_package
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import Preprocessing, build_package, open_package, verify_package
    from egovlpv2_edge.training.tasks.heads import QAHead

    src = fp32_package()
    model, answers = src["model"], ["cup", "box", "bowl", "knife"]
    head = QAHead(model.cfg.video.width, len(answers))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.5)
    export_all(model, tmp_path / "qa", graphs=["fused_upper"], qa_head=head, validate=False)
    write_answer_vocabs(tmp_path / "qa", answers)
    graphs = {g: {"fp32": src["root"] / "graphs" / f"{g}.onnx"} for g in GRAPH_NAMES}
    graphs["fused_upper"] = {"fp32": tmp_path / "qa" / "fused_upper.onnx"}
    fp32 = build_package(tmp_path / "tiny_qa", config=model.cfg, graphs=graphs, archive=False,
                         selected={g: ("fp32", "export") for g in GRAPH_NAMES},
                         tokenizer=src["root"] / "tokenizer.json", answer_vocabs={"qa": answers},
                         preprocessing=Preprocessing.from_config(model.cfg, 2.0, 1.0))  # fmt: skip
    out = quantize_package(fp32, src["egoclip"], tmp_path / "tiny_qa_int8", methods=["ort_dynamic"],
                           graphs=["fused_upper"], threads=1, max_clips=6, keep="all").package  # fmt: skip
    verify_package(out)
    with open_package(out) as pkg:
        assert pkg.answer_vocab("qa") == answers and pkg.manifest.qa_answers() == len(answers)
        entry = pkg.manifest.graphs["fused_upper"]
        int8 = entry.candidate("int8_dyn")
        assert int8 is not None and "max_logit_diff" in int8.drift  # qa_logits and vtm_logits both gated
        int8_file = pkg.graph_path("fused_upper", "int8_dyn")
        session = ort.InferenceSession(str(int8_file), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()][-1] == "qa_logits"
        spec = pkg.specs["fused_upper"]
        feeds = {t.name: np.zeros(t.concrete(2), np.float32 if t.dtype == "float32" else np.int64) for t in spec.inputs}
        feeds["attention_mask"][:, :3] = 1
        assert session.run(["qa_logits"], feeds)[0].shape == (2, len(answers))


def test_op_time_shares_split_a_real_profile(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from egovlpv2_edge.compress._measure import GEMM_OPS, op_time_shares

    rng = np.random.default_rng(0)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [256, 256], rng.standard_normal((256, 256)).astype(np.float32).ravel()
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])],
        initializer=[w],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    res = op_time_shares(path, {"x": rng.standard_normal((64, 256)).astype(np.float32)}, threads=1, runs=5)
    assert res.runs == 5 and sum(res.shares.values()) == pytest.approx(1.0)
    assert "Sigmoid" in res.shares and GEMM_OPS & set(res.shares)
    assert res.gemm_share == pytest.approx(sum(v for k, v in res.shares.items() if k in GEMM_OPS))
    assert 0 < res.gemm_share < 1 and res.kernel_ms > 0
    assert list(res.shares.values()) == sorted(res.shares.values(), reverse=True)
    assert res.weight_gemms == {(64, 256, 256): pytest.approx(1.0)}  # one product by a weight per run
    assert 0 < res.linear_share <= res.gemm_share  # no bias add here: the linear layer is the product alone
    with pytest.raises(ValueError, match="runs must be >= 1"):
        op_time_shares(path, {"x": np.zeros((64, 256), np.float32)}, runs=0)


def test_amdahl_speedup_hand_cases() -> None:
    from egovlpv2_edge.compress._measure import amdahl_speedup

    assert amdahl_speedup(0.5, 2.0) == pytest.approx(1 / 0.75)  # half the time twice as fast
    assert amdahl_speedup(0.36, float("inf")) == pytest.approx(1 / 0.64)
    assert amdahl_speedup(0.0, 10.0) == 1.0 and amdahl_speedup(1.0, 3.0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="gemm_share"):
        amdahl_speedup(1.5, 2.0)


def test_bias_add_is_part_of_a_linear_layer() -> None:
    from egovlpv2_edge.compress._measure import _is_bias_add

    args = {"input_type_shape": [{"float": [1, 65, 192]}, {"float": [192]}]}
    assert _is_bias_add("Add", args)
    assert not _is_bias_add("Add", {"input_type_shape": [{"float": [1, 65, 64]}, {"float": [1, 65, 64]}]})  # residual
    assert not _is_bias_add("Mul", args)


def test_int8_gemm_timings_time_both_forms() -> None:
    from egovlpv2_edge.compress._measure import int8_gemm_timings

    (t,) = int8_gemm_timings([(16, 32, 8)], threads=1, rounds=2)
    assert t.shape == (16, 32, 8) and t.fp32_ms > 0 and t.int8_ms > 0
    assert t.speedup == pytest.approx(t.fp32_ms / t.int8_ms)

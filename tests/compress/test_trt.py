"""TensorRT: execution-provider settings and shape profiles on CPU; Torch-TensorRT engines only with CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("cv2")

from egovlpv2_edge.compress.trt import Profile, graph_kind, shape_profile, trt_settings  # noqa: E402
from egovlpv2_edge.config import get_config  # noqa: E402
from egovlpv2_edge.graphs import graph_specs  # noqa: E402

from ._quant_helpers import PRESET, fp32_package  # noqa: E402


def test_shape_profiles_follow_the_graph_specs() -> None:
    specs = graph_specs(get_config(PRESET))
    v, t = get_config(PRESET).video, get_config(PRESET).text
    frames = f"{v.num_frames}x3x{v.img_size}x{v.img_size}"
    assert shape_profile(specs["video_lower"], Profile(1, 4, 16)) == {
        "trt_profile_min_shapes": f"frames:1x{frames}",
        "trt_profile_opt_shapes": f"frames:4x{frames}",
        "trt_profile_max_shapes": f"frames:16x{frames}",
    }
    fused = shape_profile(specs["fused_upper"], Profile(2, 2, 8))["trt_profile_max_shapes"].split(",")
    assert [s.split(":")[0] for s in fused] == specs["fused_upper"].input_names
    assert fused[2] == f"attention_mask:8x{t.max_length}"


def test_profile_rejects_unordered_batches() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile(4, 2, 8)


def test_settings_enable_int8_only_for_qdq_graphs(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    from egovlpv2_edge.compress.calibration import graph_samples, load_calibration
    from egovlpv2_edge.compress.quantize import make_variant
    from egovlpv2_edge.package import open_package

    pkg = open_package(fp32_package()["package"])
    specs = graph_specs(pkg.config)
    fp32 = {g: pkg.graph_path(g) for g in specs}
    samples = graph_samples(load_calibration(fp32_package()["videos"], pkg.preprocessing, pkg.tokenizer(), max_clips=4),
                            fp32, specs)  # fmt: skip
    files = {g: {"fp32": p} for g, p in fp32.items()}
    files["video_upper"]["int8"] = make_variant(
        "nncf_sym", fp32["video_upper"], tmp_path / "q.onnx", samples["video_upper"]
    )
    files["text_upper"]["int8_dyn"] = make_variant("ort_dynamic", fp32["text_upper"], tmp_path / "d.onnx", [])
    assert (
        graph_kind(files["video_upper"]["int8"]) == "qdq" and graph_kind(files["text_upper"]["int8_dyn"]) == "ort_int8"
    )
    selected = {g: "fp32" for g in specs} | {"video_upper": "int8", "text_upper": "int8_dyn"}
    s = trt_settings(specs, files, selected, profiles={"video_lower": Profile(1, 8, 32)})
    assert s["provider"] == "TensorrtExecutionProvider" and s["fallback"][-1] == "CPUExecutionProvider"
    g = s["graphs"]
    assert g["video_upper"]["precision"] == "int8" and g["video_upper"]["options"]["trt_int8_enable"] == "True"
    assert g["text_upper"]["precision"] == "fp32" and g["text_upper"]["options"]["trt_int8_enable"] == "False"
    assert g["video_lower"]["options"]["trt_profile_max_shapes"].startswith("frames:32x")
    assert g["video_lower"]["options"]["trt_engine_cache_path"] == "{cache_dir}/engines"
    assert all(o["options"]["trt_fp16_enable"] == "True" for o in g.values())


def test_cli_trt_puts_settings_into_the_package(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from egovlpv2_edge.compress.cli import main
    from egovlpv2_edge.package import open_package, verify_package

    out = tmp_path / "tiny_trt"
    assert main(["trt", "--package", str(fp32_package()["package"]), "--out", str(out), "--max-batch", "8"]) == 0
    assert "providers/tensorrt.json" in capsys.readouterr().out
    assert verify_package(out).files_checked == 7  # 5 graphs, tokenizer, tensorrt.json
    with open_package(out) as pkg:
        provider, options = pkg.provider_options("tensorrt", "text_lower", tmp_path / "cache")
        assert provider == "TensorrtExecutionProvider"
        assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "engines")
        assert options["trt_profile_max_shapes"].startswith("input_ids:8x")
        with pytest.raises(ValueError, match="valid: tensorrt"):
            pkg.provider_settings("openvino")
    (out / "providers" / "tensorrt.json").write_text(json.dumps({"tampered": True}))
    with pytest.raises(Exception, match="providers/tensorrt.json is corrupt"):
        verify_package(out)


def test_engines_without_cuda_say_what_to_install(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from egovlpv2_edge.compress.cli import main

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the engine path runs in test_torch_tensorrt_engines")
    argv = ["trt", "--package", str(fp32_package()["package"]), "--out", str(tmp_path / "p"), "--engines",
            str(tmp_path / "engines")]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "pip install 'egovlpv2-edge[tensorrt]'" in err and "CUDA" in err


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_torch_tensorrt_engines_match_pytorch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("torch_tensorrt")
    from egovlpv2_edge.compress.export import graph_module, sample_inputs
    from egovlpv2_edge.compress.trt import build_engines

    model = fp32_package()["model"].eval()
    specs = graph_specs(model.cfg)
    built = build_engines(model, specs, tmp_path, profiles=dict.fromkeys(specs, Profile(1, 2, 4)), fp16=False,
                          graphs=["video_upper", "text_upper"])  # fmt: skip
    for name, path in built.items():
        trt_module = torch.export.load(str(path)).module()
        inputs = sample_inputs(model, specs[name], 3, seed=1)
        with torch.no_grad():
            want = graph_module(model, name)(*inputs.values())
            got = trt_module(*(x.cuda() for x in inputs.values()))
        for w, g in zip(want, got, strict=True):
            assert torch.allclose(w, g.cpu(), atol=1e-3)

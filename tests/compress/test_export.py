"""The gate-switch graphs export to ONNX, match PyTorch in ONNX Runtime alone and composed, and fail loudly."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from egovlpv2_edge import create_model
from egovlpv2_edge.graphs import GRAPH_NAMES, GraphSpec, graph_specs
from egovlpv2_edge.model import EgoVLPv2

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from egovlpv2_edge.compress.cli import main  # noqa: E402
from egovlpv2_edge.compress.export import (  # noqa: E402
    ExportedGraph,
    ExportMismatchError,
    check_graph_io,
    export_all,
    export_graph,
    file_sha256,
    graph_module,
    sample_inputs,
    validate_graph,
)

# graphs whose inputs/outputs depend on fusion.separate_cls; the shared-CLS model copies the other weights
LAYOUT_GRAPHS = ("video_lower", "fused_upper")


@dataclass
class Exported:
    """A model, its specs and one ONNX file per graph."""

    model: EgoVLPv2
    specs: dict[str, GraphSpec]
    paths: dict[str, Path]
    records: dict[str, ExportedGraph]
    stayed_training: bool


def _randomize_gates_and_motion(model: EgoVLPv2, scale: float = 1.0) -> None:
    """Distinct non-zero gates, so fused graphs really depend on the cross-attention branches, and a non-zero
    motion-branch projection (it starts at 0), so the video graphs really depend on the branch."""
    with torch.no_grad():
        for i, gate in enumerate(model.gates()):
            gate.fill_(scale * (1 + i) / len(model.gates()))
        torch.nn.init.normal_(model.motion_proj.weight, std=0.5)


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    torch.manual_seed(0)
    model = create_model("egovlpv2_test")
    _randomize_gates_and_motion(model)
    model.train()  # export must switch to eval and restore the mode
    records = export_all(model, tmp_path_factory.mktemp("separate"))
    stayed_training = model.training
    model.eval()
    paths = {name: r.path for name, r in records.items()}
    return Exported(model, graph_specs(model.cfg), paths, records, stayed_training)


@pytest.fixture(scope="module")
def shared(separate: Exported, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    model = create_model("egovlpv2_test", fusion={"separate_cls": False})
    result = model.load_state_dict(separate.model.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["fusion_cls_token"]
    records = export_all(model, tmp_path_factory.mktemp("shared"), graphs=LAYOUT_GRAPHS)
    # same weights, same specs: the layout-independent graphs are the separate model's files (validated below)
    paths = {name: records[name].path if name in records else separate.paths[name] for name in GRAPH_NAMES}
    return Exported(model, graph_specs(model.cfg), paths, records, False)


@pytest.fixture(params=["separate", "shared"])
def exported(request: pytest.FixtureRequest) -> Exported:
    return request.getfixturevalue(request.param)


@functools.cache
def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(exp: Exported, name: str, **inputs: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    feed = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    outputs = _session(exp.paths[name]).run(None, feed)
    return dict(zip(exp.specs[name].output_names, outputs, strict=True))


def _inputs(model: EgoVLPv2, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames, ids and a mask with padded rows, as the validator draws them."""
    specs = graph_specs(model.cfg)
    video = sample_inputs(model, specs["video_lower"], batch, seed)
    text = sample_inputs(model, specs["text_lower"], batch, seed)
    return video["frames"], text["input_ids"], text["attention_mask"]


def _close(have: np.ndarray, want: torch.Tensor, atol: float) -> None:
    assert have.shape == tuple(want.shape)
    assert np.isfinite(have).all()
    np.testing.assert_allclose(have, want.numpy(), rtol=0, atol=atol)


# ----- every graph ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_graph_validates_on_fresh_inputs(exported: Exported, name: str) -> None:
    spec = exported.specs[name]
    result = validate_graph(exported.model, spec, exported.paths[name], batch=5, seed=11)
    assert set(result.diffs) == set(spec.output_names)
    assert result.batch == 5 and result.max_abs_diff <= spec.atol


def test_export_records_hash_diff_and_mode(separate: Exported) -> None:
    assert list(separate.records) == list(GRAPH_NAMES)
    for name, record in separate.records.items():
        assert record.path.name == f"{name}.onnx"
        assert record.sha256 == file_sha256(record.path) and len(record.sha256) == 64
        assert record.max_abs_diff is not None and record.max_abs_diff <= separate.specs[name].atol
        assert record.seconds > 0
    assert separate.stayed_training, "export_all must restore the model's training mode"


def test_video_lower_outputs_follow_the_layout(separate: Exported, shared: Exported) -> None:
    # the test preset has the motion branch: its share of the dual embedding goes from the lower graph to the upper
    assert separate.specs["video_lower"].output_names == ["video_tokens", "fusion_video_tokens", "video_motion"]
    assert shared.specs["video_lower"].output_names == ["video_tokens", "video_motion"]
    assert separate.specs["video_upper"].input_names == ["video_tokens", "video_motion"]
    plain = graph_specs(create_model("egovlpv2_test", video={"motion_branch": 0}).cfg)
    assert plain["video_lower"].output_names == ["video_tokens", "fusion_video_tokens"]
    assert plain["video_upper"].input_names == ["video_tokens"]
    frames = _inputs(separate.model, 2, 3)[0]
    out = _run(separate, "video_lower", frames=frames)
    # the fusion stream starts from its own CLS token, so the two outputs differ
    assert np.abs(out["video_tokens"] - out["fusion_video_tokens"]).max() > 1e-3
    with torch.no_grad():
        _close(out["video_motion"], separate.model.video_motion(frames), separate.specs["video_lower"].atol)


# ----- composed graphs equal the one-call PyTorch API ----------------------------------------------------------------
def test_video_graphs_compose_to_encode_video(exported: Exported) -> None:
    frames = _inputs(exported.model, 3, 5)[0]
    lower = _run(exported, "video_lower", frames=frames)
    emb = _run(exported, "video_upper", video_tokens=lower["video_tokens"], video_motion=lower["video_motion"])
    emb = emb["video_embedding"]
    with torch.no_grad():
        want = exported.model.encode_video(frames, normalize=True)
    _close(emb, want, exported.specs["video_upper"].atol)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_text_graphs_compose_to_encode_text(exported: Exported) -> None:
    _, ids, mask = _inputs(exported.model, 4, 6)
    tokens = _run(exported, "text_lower", input_ids=ids, attention_mask=mask)["text_tokens"]
    emb = _run(exported, "text_upper", text_tokens=tokens, attention_mask=mask)["text_embedding"]
    with torch.no_grad():
        want = exported.model.encode_text(ids, mask, normalize=True)
    _close(emb, want, exported.specs["text_upper"].atol)


def _fused(exp: Exported, frames: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    video_in = exp.specs["fused_upper"].input_names[0]  # fusion_video_tokens, or video_tokens when shared
    video = _run(exp, "video_lower", frames=frames)[video_in]
    text = _run(exp, "text_lower", input_ids=ids, attention_mask=mask)["text_tokens"]
    return _run(exp, "fused_upper", **{video_in: video, "text_tokens": text, "attention_mask": mask})


def test_fused_graphs_compose_to_forward_fusion(exported: Exported) -> None:
    frames, ids, mask = _inputs(exported.model, 3, 7)
    out = _fused(exported, frames, ids, mask)
    with torch.no_grad():
        want = exported.model.forward_fusion(frames, ids, mask)
    atol = exported.specs["fused_upper"].atol
    _close(out["vtm_logits"], want.vtm_logits, atol)
    _close(out["fused_video_cls"], want.video_cls, atol)
    _close(out["fused_text_cls"], want.text_cls, atol)


def test_gates_are_baked_into_fused_upper(separate: Exported) -> None:
    frames, ids, mask = _inputs(separate.model, 2, 8)
    out = _fused(separate, frames, ids, mask)
    model = separate.model
    gates = [g.detach().clone() for g in model.gates()]
    try:
        with torch.no_grad():
            for g in model.gates():
                g.zero_()
            gates_off = model.forward_fusion(frames, ids, mask)
    finally:
        with torch.no_grad():
            for g, value in zip(model.gates(), gates, strict=True):
                g.copy_(value)
    assert np.abs(out["fused_video_cls"] - gates_off.video_cls.numpy()).max() > 10 * separate.specs["fused_upper"].atol
    assert np.abs(out["fused_text_cls"] - gates_off.text_cls.numpy()).max() > 10 * separate.specs["fused_upper"].atol


def test_fully_padded_text_row_stays_finite(exported: Exported) -> None:
    frames, ids, mask = _inputs(exported.model, 2, 9)
    mask[1] = 0
    ids[1] = exported.model.cfg.text.pad_id
    tokens = _run(exported, "text_lower", input_ids=ids, attention_mask=mask)["text_tokens"]
    emb = _run(exported, "text_upper", text_tokens=tokens, attention_mask=mask)["text_embedding"]
    fused = _fused(exported, frames, ids, mask)
    with torch.no_grad():
        want_emb = exported.model.encode_text(ids, mask, normalize=True)
        want = exported.model.forward_fusion(frames, ids, mask)
    _close(emb, want_emb, exported.specs["text_upper"].atol)
    _close(fused["vtm_logits"], want.vtm_logits, exported.specs["fused_upper"].atol)
    _close(fused["fused_video_cls"], want.video_cls, exported.specs["fused_upper"].atol)


# ----- mismatches fail loudly ----------------------------------------------------------------------------------------
def test_tampered_graph_raises_with_diff_and_tolerance(separate: Exported, tmp_path: Path) -> None:
    from onnx import numpy_helper

    model_proto = onnx.load(str(separate.paths["text_upper"]))
    init = max(model_proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the FFN weight
    weights = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).normal(0.0, 0.05, weights.shape).astype(weights.dtype)
    init.CopyFrom(numpy_helper.from_array(weights + noise, init.name))
    path = tmp_path / "text_upper.onnx"
    onnx.save(model_proto, str(path))
    with pytest.raises(ExportMismatchError, match=r"'text_upper'.*'text_embedding'.*max abs .* > tolerance 1\.0e-04"):
        validate_graph(separate.model, separate.specs["text_upper"], path)


def test_graph_from_another_layout_raises(separate: Exported, shared: Exported) -> None:
    # the separate model's fused_upper takes fusion_video_tokens; the shared spec wants video_tokens
    with pytest.raises(ExportMismatchError, match=r"inputs are \['fusion_video_tokens'.*spec wants \['video_tokens'"):
        validate_graph(shared.model, shared.specs["fused_upper"], separate.paths["fused_upper"])


def test_spec_with_another_input_name_or_size_raises(separate: Exported) -> None:
    spec = separate.specs["text_upper"]
    renamed = dataclasses.replace(spec, inputs=(dataclasses.replace(spec.inputs[0], name="hidden"), *spec.inputs[1:]))
    with pytest.raises(ExportMismatchError, match=r"'text_upper'.*\['text_tokens', 'attention_mask'\].*'hidden'"):
        check_graph_io(separate.paths["text_upper"], renamed)
    resized = dataclasses.replace(spec, outputs=(dataclasses.replace(spec.outputs[0], shape=("batch", 7)),))
    with pytest.raises(
        ExportMismatchError, match=r"output 'text_embedding' is float32 \('batch', 24\).*\('batch', 7\)"
    ):
        check_graph_io(separate.paths["text_upper"], resized)


def test_bad_arguments_name_the_valid_choices(separate: Exported, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown graph 'audio'.*video_lower, video_upper"):
        graph_module(separate.model, "audio")
    with pytest.raises(ValueError, match="unknown graph.*'audio'.*valid graphs"):
        export_all(separate.model, tmp_path, graphs=["audio"])
    with pytest.raises(ValueError, match="batch 1 is too small"):
        export_graph(separate.model, separate.specs["text_upper"], tmp_path / "x.onnx", batch=1)


# ----- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_exports_validates_and_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--preset", "egovlpv2_test", "--out", str(tmp_path), "--graphs", "text_lower"]) == 0
    out = capsys.readouterr().out
    assert "graph" in out and "max abs diff" in out and "tolerance" in out and "size MB" in out
    row = next(line for line in out.splitlines() if line.startswith("text_lower"))
    assert float(row.split()[1]) <= 1e-4
    assert (tmp_path / "text_lower.onnx").is_file() and not (tmp_path / "video_lower.onnx").exists()


def test_cli_rejects_an_unknown_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--preset", "egovlpv2_nope", "--out", str(tmp_path)]) == 2
    assert "valid presets" in capsys.readouterr().err


def test_cli_reports_a_failed_validation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from egovlpv2_edge.compress import export

    def fail(*args: object, **kwargs: object) -> ExportedGraph:
        raise ExportMismatchError("graph 'text_lower': output 'text_tokens' differs")

    monkeypatch.setattr(export, "export_one", fail)
    assert main(["export", "--preset", "egovlpv2_test", "--out", str(tmp_path), "--graphs", "text_lower"]) == 1
    assert "output 'text_tokens' differs" in capsys.readouterr().err

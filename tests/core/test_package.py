"""Tests for ``egovlpv2_edge.package`` (the versioned, verifiable model package) and ``egovlp package``.

The graphs are tiny hand-made ONNX models (Cast/ReduceMean/Reshape/Expand chains) with exactly the inputs and
outputs of ``graph_specs(get_config("egovlpv2_test"))``: the package only cares about interfaces and bytes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from egovlpv2_edge import _cli_package, package
from egovlpv2_edge.config import get_config
from egovlpv2_edge.graphs import GRAPH_NAMES, GraphSpec, TensorSpec, graph_specs
from egovlpv2_edge.package import (
    ChecksumError,
    GraphMismatchError,
    Manifest,
    ManifestError,
    MissingFileError,
    PackageError,
    Preprocessing,
    SchemaVersionError,
    UnsafeArchiveError,
    archive_path,
    build_package,
    load_manifest,
    open_package,
    verify_package,
)
from egovlpv2_edge.tokenizer import Tokenizer

PRESET = "egovlpv2_test"
_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}


# ---------------------------------------------------------------------------------------------- helpers
def _value(t: TensorSpec, name: str | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name or t.name, _DTYPES[t.dtype], list(t.shape))


def make_graph(spec: GraphSpec, rename_input: dict[str, str] | None = None) -> onnx.ModelProto:
    """A valid ONNX model with the spec's interface: each output = mean of the first input, broadcast to shape."""
    rename_input = rename_input or {}
    first = rename_input.get(spec.inputs[0].name, spec.inputs[0].name)
    nodes = [helper.make_node("Cast", [first], ["x"], to=TensorProto.FLOAT)]
    rank = len(spec.inputs[0].shape)
    inits = [helper.make_tensor("axes", TensorProto.INT64, [rank - 1], list(range(1, rank)))]
    nodes.append(helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0))  # (B,)
    for i, out in enumerate(spec.outputs):
        rest = [int(d) for d in out.shape[1:]]
        inits.append(helper.make_tensor(f"s{i}", TensorProto.INT64, [len(rest) + 1], [-1] + [1] * len(rest)))
        inits.append(helper.make_tensor(f"e{i}", TensorProto.INT64, [len(rest) + 1], [1, *rest]))
        nodes.append(helper.make_node("Reshape", ["m", f"s{i}"], [f"r{i}"]))
        nodes.append(helper.make_node("Expand", [f"r{i}", f"e{i}"], [f"f{i}"]))
        nodes.append(helper.make_node("Cast", [f"f{i}"], [out.name], to=_DTYPES[out.dtype]))
    inputs = [_value(t, rename_input.get(t.name)) for t in spec.inputs]
    graph = helper.make_graph(nodes, spec.name, inputs, [_value(t) for t in spec.outputs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _narrations(n: int) -> list[str]:
    verbs, nouns = ["picks up", "opens", "cuts", "washes", "holds"], ["cup", "knife", "door", "onion", "plate"]
    return [f"#C C {verbs[i % 5]} the {nouns[(i * 3) % 5]} number {i % 7}" for i in range(n)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Graph files (fp32 and int8 of each graph) and a tokenizer, as a build takes them."""
    root = tmp_path_factory.mktemp("sources")
    cfg = get_config(PRESET)
    graphs: dict[str, dict[str, Path]] = {}
    for name, spec in graph_specs(cfg).items():
        graphs[name] = {}
        for precision in ("fp32", "int8"):
            path = root / f"{name}.{precision}.onnx"
            model = make_graph(spec)
            model.doc_string = precision  # the two precisions differ in bytes
            onnx.save(model, path)
            graphs[name][precision] = path
    tok = Tokenizer.train_bpe(_narrations(200), vocab_size=300, max_length=cfg.text.max_length)
    return {"cfg": cfg, "graphs": graphs, "tokenizer": tok.save(root / "tokenizer.json"), "root": root}


def _build(sources: dict, out: Path, **kwargs) -> Path:
    cfg = sources["cfg"]
    selected = {g: ("fp32", "reference precision") for g in GRAPH_NAMES}
    selected["video_lower"] = ("int8", "int8 1.7x faster, -0.3 R@1")
    args = {
        "config": cfg,
        "graphs": sources["graphs"],
        "selected": selected,
        "tokenizer": sources["tokenizer"],
        "preprocessing": Preprocessing.from_config(cfg, clip_seconds=2.0, stride_seconds=1.0),
        "answer_vocabs": {"egotaskqa": ["yes", "no", "cup"]},
        "metrics": {"fp32": {"egomcq_inter": 0.91, "ms_per_clip": 12.5}, "int8": {"egomcq_inter": 0.90}},
        "source_checkpoint": "ab" * 32,
    }
    return build_package(out, **(args | kwargs))


@pytest.fixture(scope="module")
def built(sources: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good package directory (with its archive beside it); tests copy it before corrupting it."""
    return _build(sources, tmp_path_factory.mktemp("built") / "tiny_pkg")


@pytest.fixture
def pkg(built: Path, tmp_path: Path) -> Path:
    """A private copy of the good package directory."""
    return Path(shutil.copytree(built, tmp_path / built.name))


def _edit_manifest(root: Path, edit) -> None:
    data = json.loads((root / "manifest.json").read_text())
    edit(data)
    (root / "manifest.json").write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------ build/verify
def test_build_then_verify(built: Path, sources: dict) -> None:
    report = verify_package(built)
    assert report.name == "tiny_pkg" and report.schema_version == 1 and report.preset == PRESET
    assert report.selected == {g: ("int8" if g == "video_lower" else "fp32") for g in GRAPH_NAMES}
    assert report.files_checked == 2 * len(GRAPH_NAMES) + 1 and report.interfaces == "onnx"
    m = load_manifest(built)
    assert list(m.graphs) == list(GRAPH_NAMES)
    lower = m.graphs["video_lower"]
    assert lower.reason == "int8 1.7x faster, -0.3 R@1" and set(lower.files) == {"fp32", "int8"}
    assert lower.files["int8"].file == "graphs/video_lower.int8.onnx"
    assert lower.files["int8"].size == sources["graphs"]["video_lower"]["int8"].stat().st_size
    assert lower.inputs[0].shape == ("batch", 2, 3, 32, 32)
    assert m.fusion == {"fused_layers": 1, "gate": package.GATE_SEMANTICS, "separate_cls": True}
    assert m.model_config() == sources["cfg"] and m.preprocessing.text_max_length == 12
    assert m.answer_vocabs == {"egotaskqa": ("yes", "no", "cup")} and m.source_checkpoint_sha256 == "ab" * 32
    assert m.metrics["fp32"]["ms_per_clip"] == 12.5
    assert {"python", "numpy", "onnx", "tokenizers"} <= set(m.libraries)
    raw = json.loads((built / "manifest.json").read_text())
    assert next(iter(raw)) == "schema_version" and Manifest.from_dict(raw) == m
    assert not list(built.glob(".*tmp*")) and not list(built.parent.glob(".*tmp*"))


def test_build_rejects_bad_arguments(sources: dict, tmp_path: Path) -> None:
    graphs = {g: p for g, p in sources["graphs"].items() if g != "fused_upper"}
    with pytest.raises(PackageError, match=r"missing graph\(s\) \['fused_upper'\].*valid graphs"):
        _build(sources, tmp_path / "a", graphs=graphs)
    selected = {g: ("fp16", "why") for g in GRAPH_NAMES}
    with pytest.raises(PackageError, match=r"selected\['video_lower'\].*one of \['fp32', 'int8'\]"):
        _build(sources, tmp_path / "b", selected=selected)
    bad = get_config(PRESET, text={"max_length": 20})
    with pytest.raises(PackageError, match="text_max_length=12 .config: 20"):
        _build(sources, tmp_path / "c", config=bad)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_build_rejects_graph_that_breaks_its_spec(sources: dict, tmp_path: Path) -> None:
    spec = graph_specs(sources["cfg"])["text_lower"]
    wrong = tmp_path / "text_lower.onnx"
    onnx.save(make_graph(spec, rename_input={"input_ids": "ids"}), wrong)
    graphs = {**sources["graphs"], "text_lower": {"fp32": wrong}}
    with pytest.raises(GraphMismatchError, match="text_lower.*input_ids"):
        _build(sources, tmp_path / "pkg", graphs=graphs)
    assert not (tmp_path / "pkg").exists()


def test_open_directory_gives_selected_graphs_and_tokenizer(built: Path) -> None:
    with open_package(built) as p:
        assert p.graph_paths["video_lower"] == built / "graphs/video_lower.int8.onnx"
        assert p.graph_path("video_lower", "fp32") == built / "graphs/video_lower.fp32.onnx"
        batch = p.tokenizer().encode(["#C C opens the door"])
        assert batch.input_ids.shape == (1, 12)
        assert p.answer_vocab("egotaskqa") == ["yes", "no", "cup"]
        with pytest.raises(ValueError, match="valid: fp32, int8"):
            p.graph_path("video_lower", "fp16")


def test_selected_graph_runs_in_onnxruntime(built: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    p = open_package(built)
    session = ort.InferenceSession(str(p.graph_paths["text_lower"]), providers=["CPUExecutionProvider"])
    ids = p.tokenizer().encode(["#C C cuts the onion", "#C C holds the cup"])
    (out,) = session.run(None, {"input_ids": ids.input_ids, "attention_mask": ids.attention_mask})
    assert out.shape == (2, 12, 48) and out.dtype == np.float32


# ---------------------------------------------------------------------------------------------- archive
def test_archive_round_trip(built: Path, tmp_path: Path) -> None:
    archive = Path(shutil.copy(archive_path(built), tmp_path / "tiny_pkg.egopkg"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "tiny_pkg/manifest.json" and all(n.startswith("tiny_pkg/") for n in names)
    assert "tiny_pkg/graphs/fused_upper.int8.onnx" in names and len(names) == 12
    assert verify_package(archive).path == str(archive)
    first = open_package(archive)
    assert first.root == tmp_path / "tiny_pkg.egopkg.d" / "tiny_pkg"
    assert first.graph_paths["text_upper"].read_bytes() == (built / "graphs/text_upper.fp32.onnx").read_bytes()
    assert first.tokenizer().vocab_size == Tokenizer.from_file(built / "tokenizer.json").vocab_size
    mtime = (first.root / "manifest.json").stat().st_mtime_ns
    again = open_package(archive)  # cache hit: verified, not extracted again
    assert again.root == first.root and (again.root / "manifest.json").stat().st_mtime_ns == mtime


def test_archive_is_deterministic(built: Path, tmp_path: Path) -> None:
    copy = package.write_archive(built, tmp_path / "again.egopkg")
    assert copy.read_bytes() == archive_path(built).read_bytes()


def test_damaged_extraction_cache_is_replaced(built: Path, tmp_path: Path) -> None:
    archive = Path(shutil.copy(archive_path(built), tmp_path / "tiny_pkg.egopkg"))
    root = open_package(archive).root
    (root / "graphs/fused_upper.fp32.onnx").write_bytes(b"garbage")
    reopened = open_package(archive)
    assert reopened.report.files_checked == 11
    assert (root / "graphs/fused_upper.fp32.onnx").read_bytes() == (built / "graphs/fused_upper.fp32.onnx").read_bytes()


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes]], path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "nested_dotdot"])
def test_malicious_archive_is_rejected(tmp_path: Path, kind: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    good = tarfile.TarInfo("pkg/manifest.json")
    if kind == "symlink":
        evil = tarfile.TarInfo("pkg/graphs/video_lower.fp32.onnx")
        evil.type, evil.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        name = {"dotdot": "../evil", "absolute": str(tmp_path / "evil"), "nested_dotdot": "pkg/../../evil"}[kind]
        evil = tarfile.TarInfo(name)
    archive = _tar_with([(good, b"{}"), (evil, b"" if kind == "symlink" else b"pwned")], work / "bad.egopkg")
    with pytest.raises(UnsafeArchiveError, match="bad.egopkg.*member") as err:
        open_package(archive)
    assert evil.name in str(err.value) and "refusing" in str(err.value)
    assert not (tmp_path / "evil").exists() and not (work / "bad.egopkg.d").exists()
    with pytest.raises(UnsafeArchiveError):
        package.extract_archive(archive, work / "out")
    assert not (work / "out").exists()


# ------------------------------------------------------------------------------------ corruption/typed errors
def test_flipped_byte_in_a_graph_is_a_checksum_error(pkg: Path) -> None:
    graph = pkg / "graphs/text_upper.int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    expected = load_manifest(pkg).graphs["text_upper"].files["int8"].sha256
    with pytest.raises(ChecksumError) as err:
        verify_package(pkg)
    msg = str(err.value)
    assert "graphs/text_upper.int8.onnx" in msg and expected in msg and package.sha256_file(graph)[0] in msg
    assert "re-download/copy" in msg
    with pytest.raises(ChecksumError):
        open_package(pkg)


def test_missing_file_is_named(pkg: Path) -> None:
    (pkg / "tokenizer.json").unlink()
    (pkg / "graphs/fused_upper.fp32.onnx").unlink()
    with pytest.raises(MissingFileError, match=r"missing graphs/fused_upper\.fp32\.onnx, tokenizer\.json"):
        verify_package(pkg)


def test_unknown_schema_version_is_named(pkg: Path) -> None:
    _edit_manifest(pkg, lambda m: m.update(schema_version=99))
    with pytest.raises(SchemaVersionError, match=r"schema_version 99 is not supported .*reads 1\).*upgrade"):
        verify_package(pkg)
    with pytest.raises(SchemaVersionError):
        load_manifest(pkg)


def test_graph_missing_from_manifest_is_named(pkg: Path) -> None:
    _edit_manifest(pkg, lambda m: m["graphs"].pop("fused_upper"))
    with pytest.raises(PackageError, match=r"missing \['fused_upper'\]"):
        verify_package(pkg)


def test_manifest_path_outside_the_package_is_rejected(pkg: Path) -> None:
    _edit_manifest(pkg, lambda m: m["tokenizer"].update(file="../../etc/passwd"))
    with pytest.raises(ManifestError, match=r"'../../etc/passwd' must be relative"):
        verify_package(pkg)


def test_graph_interface_mismatch_is_named(pkg: Path, sources: dict) -> None:
    spec = graph_specs(sources["cfg"])["text_lower"]
    target = pkg / "graphs/text_lower.fp32.onnx"
    onnx.save(make_graph(spec, rename_input={"attention_mask": "mask"}), target)
    digest, size = package.sha256_file(target)

    def fix_hash(m: dict) -> None:  # only the interface check can catch it now
        m["graphs"]["text_lower"]["files"]["fp32"].update(sha256=digest, size=size)

    _edit_manifest(pkg, fix_hash)
    with pytest.raises(GraphMismatchError) as err:
        verify_package(pkg)
    msg = str(err.value)
    assert "text_lower" in msg and "'attention_mask'" in msg and "'mask'" in msg and "re-export" in msg


def test_graph_with_fixed_batch_is_a_mismatch(pkg: Path, sources: dict) -> None:
    spec = graph_specs(sources["cfg"])["video_upper"]
    model = make_graph(spec)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # batch fixed to 1
    target = pkg / "graphs/video_upper.fp32.onnx"
    onnx.save(model, target)
    digest, size = package.sha256_file(target)
    _edit_manifest(pkg, lambda m: m["graphs"]["video_upper"]["files"]["fp32"].update(sha256=digest, size=size))
    with pytest.raises(GraphMismatchError, match=r"video_upper.*'video_tokens'.*dim 0 \('batch'\) must be dynamic"):
        verify_package(pkg)


def test_killed_build_leaves_no_valid_package(sources: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = package._atomic_write_bytes

    def killed(path: Path, data: bytes) -> None:
        path.with_name(f".{path.name}.tmp-{os.getpid()}").write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed while writing the manifest")

    out = tmp_path / "tiny_pkg"
    _build(sources, out)  # a good package first: a killed rebuild must not leave its old manifest behind
    monkeypatch.setattr(package, "_atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        _build(sources, out, overwrite=True)
    monkeypatch.setattr(package, "_atomic_write_bytes", real)
    assert (out / "graphs").is_dir() and not (out / "manifest.json").exists()
    assert not archive_path(out).exists()
    with pytest.raises(MissingFileError, match="no manifest.json: its build did not finish"):
        verify_package(out)
    with pytest.raises(MissingFileError):
        open_package(out)
    with pytest.raises(PackageError, match="not empty.*overwrite"):
        _build(sources, out)
    assert verify_package(_build(sources, out, overwrite=True)).files_checked == 11


def test_overwrite_refuses_a_directory_that_is_not_a_package(sources: dict, tmp_path: Path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    with pytest.raises(PackageError, match="holds no package"):
        _build(sources, out, overwrite=True)
    assert (out / "todo.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------- torch-free
_BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top == "torch" or top in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, _Block())
    """
)


@pytest.mark.parametrize("blocked", [(), ("onnx",)], ids=["no-torch", "no-torch-no-onnx"])
def test_verify_and_open_without_torch(built: Path, tmp_path: Path, blocked: tuple[str, ...]) -> None:
    archive = Path(shutil.copy(archive_path(built), tmp_path / "tiny_pkg.egopkg"))
    code = (
        f"BLOCKED = {blocked!r}\n"
        + _BLOCK
        + textwrap.dedent(
            f"""
        from egovlpv2_edge.package import open_package, verify_package
        report = verify_package({str(built)!r})
        pkg = open_package({str(archive)!r})
        assert pkg.tokenizer().encode("#C C opens the door").input_ids.shape == (1, 12)
        assert "torch" not in sys.modules and not any(m in sys.modules for m in BLOCKED)
        print("ok", report.interfaces, pkg.report.interfaces)
        """
        )
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    reader = "onnxruntime" if blocked else "onnx"
    assert res.stdout.split() == ["ok", reader, reader]


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_verify_and_info_on_a_good_package(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert _cli_package.main(["verify", str(built)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {built}") and "sha256 OK" in out and "video_lower=int8" in out
    assert _cli_package.main(["verify", str(archive_path(built))]) == 0
    assert _cli_package.main(["info", str(built)]) == 0
    out = capsys.readouterr().out
    assert f"preset {PRESET}" in out and "int8 1.7x faster, -0.3 R@1" in out and "clip_seconds 2.0" in out
    assert "egomcq_inter" in out and "selected" in out


def test_cli_verify_and_info_on_a_corrupt_package(pkg: Path, capsys: pytest.CaptureFixture) -> None:
    (pkg / "graphs/video_upper.fp32.onnx").write_bytes(b"not onnx")
    assert _cli_package.main(["verify", str(pkg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"FAILED {pkg}") and "graphs/video_upper.fp32.onnx is corrupt" in err
    _edit_manifest(pkg, lambda m: m.update(schema_version=7))
    assert _cli_package.main(["info", str(pkg)]) == 1
    assert "schema_version 7" in capsys.readouterr().err
    assert _cli_package.main(["verify", str(pkg.parent / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_build_from_a_graphs_dir(sources: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graphs_dir = tmp_path / "exported"
    graphs_dir.mkdir()
    for precisions in sources["graphs"].values():
        for path in precisions.values():
            shutil.copy(path, graphs_dir / path.name)
    out = tmp_path / "by_hand"
    argv = ["build", "--config-preset", PRESET, "--graphs-dir", str(graphs_dir), "--tokenizer"]
    argv += [str(sources["tokenizer"]), "--out", str(out), "--select", "text_upper=int8:smaller"]
    assert _cli_package.main(argv) == 0
    assert str(archive_path(out)) in capsys.readouterr().out
    m = load_manifest(archive_path(out))
    assert m.graphs["video_lower"].selected == "fp32" and m.graphs["text_upper"].reason == "smaller"
    assert set(m.graphs["video_lower"].files) == {"fp32", "int8"}
    (graphs_dir / "video_lower.fp32.onnx").unlink()
    (graphs_dir / "video_lower.int8.onnx").unlink()
    assert _cli_package.main(argv[:-2] + ["--out", str(tmp_path / "other")]) == 1
    assert "video_lower" in capsys.readouterr().err

"""A package whose fused graph has a QA head (``qa_logits``) carries the answer vocabulary ``"qa"`` of its size:
build and verify check it, the CLI builds it from an export folder, and mismatches are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from egovlpv2_edge import _cli_package
from egovlpv2_edge.config import get_config
from egovlpv2_edge.graphs import GRAPH_NAMES, QA_OUTPUT, graph_specs
from egovlpv2_edge.package import (
    AnswerVocabError,
    GraphMismatchError,
    Preprocessing,
    build_package,
    load_manifest,
    open_package,
    verify_package,
)
from egovlpv2_edge.tokenizer import Tokenizer
from tests.core.test_package import make_graph

PRESET = "egovlpv2_test"
ANSWERS = ["cup", "box", "bowl", "knife"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Hand-made graphs with the test preset's interfaces; ``fused_qa`` is the fused graph with a 4-answer head."""
    root = tmp_path_factory.mktemp("qa_sources")
    cfg = get_config(PRESET)
    graphs = {}
    for name, spec in graph_specs(cfg).items():
        graphs[name] = root / f"{name}.onnx"
        onnx.save(make_graph(spec), graphs[name])
    fused_qa = root / "qa" / "fused_upper.onnx"
    fused_qa.parent.mkdir()
    onnx.save(make_graph(graph_specs(cfg, qa_answers=len(ANSWERS))["fused_upper"]), fused_qa)
    tok = Tokenizer.train_bpe([f"C picks up the {a}" for a in ANSWERS] * 20, vocab_size=300, max_length=12)
    return {"cfg": cfg, "graphs": graphs, "fused_qa": fused_qa, "tokenizer": tok.save(root / "tokenizer.json")}


def _build(sources: dict, out: Path, fused: dict[str, Path] | None = None, **kwargs) -> Path:
    cfg = sources["cfg"]
    graphs = {g: {"fp32": p} for g, p in sources["graphs"].items()}
    graphs["fused_upper"] = fused or {"fp32": sources["fused_qa"]}
    return build_package(
        out,
        config=cfg,
        graphs=graphs,
        selected={g: ("fp32", "reference") for g in GRAPH_NAMES},
        tokenizer=sources["tokenizer"],
        preprocessing=Preprocessing.from_config(cfg, clip_seconds=2.0, stride_seconds=1.0),
        archive=False,
        **kwargs,
    )


def test_build_and_verify_a_package_with_a_qa_head(sources: dict, tmp_path: Path) -> None:
    out = _build(sources, tmp_path / "qa_pkg", answer_vocabs={"qa": ANSWERS})
    manifest = load_manifest(out)
    assert manifest.qa_answers() == len(ANSWERS) and list(manifest.answer_vocabs["qa"]) == ANSWERS
    assert manifest.graphs["fused_upper"].outputs[-1].to_dict() == {"name": QA_OUTPUT, "dtype": "float32",
                                                                    "shape": ["batch", 4]}  # fmt: skip
    verify_package(out)
    with open_package(out) as pkg:
        assert pkg.specs["fused_upper"].output_names[-1] == QA_OUTPUT and pkg.answer_vocab("qa") == ANSWERS
    plain = _build(sources, tmp_path / "plain", fused={"fp32": sources["graphs"]["fused_upper"]},
                   answer_vocabs={"qa": ANSWERS})  # fmt: skip  # a vocabulary without a head is allowed
    assert load_manifest(plain).qa_answers() is None
    with open_package(plain) as pkg:
        assert QA_OUTPUT not in pkg.specs["fused_upper"].output_names


def test_build_names_a_missing_or_wrong_sized_vocabulary(sources: dict, tmp_path: Path) -> None:
    with pytest.raises(AnswerVocabError, match=r"QA head \(qa_logits: 4 answers\).*no answer vocabulary 'qa'"):
        _build(sources, tmp_path / "a", answer_vocabs={"egotaskqa": ANSWERS})
    with pytest.raises(AnswerVocabError, match="'qa' has 3 answers but the fused graph's qa_logits has 4"):
        _build(sources, tmp_path / "b", answer_vocabs={"qa": ANSWERS[:3]})
    assert not (tmp_path / "b" / "manifest.json").exists()
    mixed = {"fp32": sources["fused_qa"], "int8": sources["graphs"]["fused_upper"]}  # one with, one without
    with pytest.raises(GraphMismatchError, match="precisions of graph 'fused_upper' disagree on the QA head"):
        _build(sources, tmp_path / "c", fused=mixed, answer_vocabs={"qa": ANSWERS})


def test_verify_names_a_vocabulary_that_does_not_fit_the_head(sources: dict, tmp_path: Path) -> None:
    pkg = _build(sources, tmp_path / "qa_pkg", answer_vocabs={"qa": ANSWERS})
    data = json.loads((pkg / "manifest.json").read_text())
    data["answer_vocabs"]["qa"] = [*ANSWERS, "plate"]
    (pkg / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(AnswerVocabError, match="'qa' has 5 answers but the fused graph's qa_logits has 4"):
        verify_package(pkg)
    assert _cli_package.main(["verify", str(pkg)]) == 1
    del data["answer_vocabs"]["qa"]
    (pkg / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(AnswerVocabError, match="no answer vocabulary 'qa'"):
        verify_package(pkg)
    data["graphs"]["fused_upper"]["outputs"][-1]["shape"] = ["batch", 5]  # manifest and vocabulary: 5; the file: 4
    data["answer_vocabs"]["qa"] = [*ANSWERS, "plate"]
    (pkg / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(GraphMismatchError, match="'qa_logits' is float32\\['batch', 4\\] in the file"):
        verify_package(pkg)


def test_cli_build_takes_the_vocabulary_written_beside_the_export(sources: dict, tmp_path: Path, capsys) -> None:
    export = tmp_path / "export"
    export.mkdir()
    for name, path in sources["graphs"].items():
        shutil.copy(sources["fused_qa"] if name == "fused_upper" else path, export / f"{name}.onnx")
    argv = ["build", "--config-preset", PRESET, "--graphs-dir", str(export), "--tokenizer", str(sources["tokenizer"])]
    assert _cli_package.main([*argv, "--out", str(tmp_path / "no_vocab")]) == 1
    assert "no answer vocabulary 'qa'" in capsys.readouterr().err
    (export / "answer_vocabs.json").write_text(json.dumps({"qa": ANSWERS}))  # what `compress export` writes
    assert _cli_package.main([*argv, "--out", str(tmp_path / "pkg")]) == 0
    assert "QA head: fused_upper returns qa_logits (4 answers)" in capsys.readouterr().out
    verify_package(tmp_path / "pkg.egopkg")
    assert list(load_manifest(tmp_path / "pkg").answer_vocabs["qa"]) == ANSWERS
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"qa": ANSWERS[:2]}))
    assert _cli_package.main([*argv, "--out", str(tmp_path / "pkg2"), "--answer-vocabs", str(other)]) == 1
    assert "'qa' has 2 answers" in capsys.readouterr().err


def _dual_head(cfg, answers: int, seed: int = 0, width: int | None = None):
    """A gates-off QA head over ``[video; text]`` embeddings (``width`` replaces ``2 * embed_dim`` when given)."""
    import numpy as np

    from egovlpv2_edge._package_qa import DualQAHead

    rng = np.random.default_rng(seed)
    d = width or 2 * cfg.heads.embed_dim
    layers = [(rng.normal(size=(answers, d)), rng.normal(size=answers)), (rng.normal(size=(answers, answers)),
                                                                            rng.normal(size=answers))]  # fmt: skip
    return DualQAHead(layers, cfg.heads.embed_dim, {"questions": 3})


def test_a_gates_off_qa_head_is_built_verified_and_read_back(sources: dict, tmp_path: Path, capsys) -> None:
    import numpy as np

    from egovlpv2_edge._package_qa import write_dual_qa_head

    cfg = sources["cfg"]
    head = _dual_head(cfg, len(ANSWERS))
    path = write_dual_qa_head(tmp_path / "qa_dual.json", head)
    plain = {"fp32": sources["graphs"]["fused_upper"]}  # a fused graph without qa_logits
    pkg = _build(sources, tmp_path / "pkg", fused=plain, answer_vocabs={"qa": ANSWERS}, heads={"qa_dual": path})
    verify_package(pkg)
    with open_package(pkg) as opened:
        read = opened.dual_qa_head()
        assert read is not None and read.num_answers == len(ANSWERS) and read.info == {"questions": 3}
        v, t = np.random.default_rng(1).normal(size=(3, 24)), np.random.default_rng(2).normal(size=24)
        np.testing.assert_allclose(read.logits(v, t), head.logits(v, t), rtol=1e-6, atol=1e-5)
    assert _cli_package.main(["info", str(pkg)]) == 0
    assert "gates-off head heads/qa_dual.json on the dual embeddings" in capsys.readouterr().out
    with pytest.raises(AnswerVocabError, match="scores 4 answers but the package's 'qa' vocabulary has none"):
        _build(sources, tmp_path / "no_vocab", fused=plain, heads={"qa_dual": path})
    wide = write_dual_qa_head(tmp_path / "wide.json", _dual_head(cfg, len(ANSWERS), width=30))
    with pytest.raises(AnswerVocabError, match="must read 48 inputs \\(\\[video; text\\] embeddings of width 24\\)"):
        _build(sources, tmp_path / "wide", fused=plain, answer_vocabs={"qa": ANSWERS}, heads={"qa_dual": wide})
    assert not (tmp_path / "wide" / "manifest.json").exists()  # refused before anything was written


def test_verify_and_cli_build_take_the_gates_off_head(sources: dict, tmp_path: Path, capsys) -> None:
    from egovlpv2_edge._package_qa import write_dual_qa_head

    export = tmp_path / "export"
    export.mkdir()
    for name, path in sources["graphs"].items():
        shutil.copy(path, export / f"{name}.onnx")
    (export / "answer_vocabs.json").write_text(json.dumps({"qa": ANSWERS}))  # what `compress export` writes
    write_dual_qa_head(export / "qa_dual.json", _dual_head(sources["cfg"], len(ANSWERS)))
    argv = ["build", "--config-preset", PRESET, "--graphs-dir", str(export), "--tokenizer", str(sources["tokenizer"])]
    assert _cli_package.main([*argv, "--out", str(tmp_path / "pkg")]) == 0
    capsys.readouterr()
    assert "qa_dual" in load_manifest(tmp_path / "pkg").heads
    data = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    data["answer_vocabs"]["qa"] = ANSWERS[:3]
    (tmp_path / "pkg" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(AnswerVocabError, match="scores 4 answers but the package's 'qa' vocabulary has 3"):
        verify_package(tmp_path / "pkg")
    head_file = tmp_path / "pkg" / "heads" / "qa_dual.json"
    head_file.write_text(head_file.read_text().replace('"relu"', '"gelu"'))
    data["answer_vocabs"]["qa"] = ANSWERS
    (tmp_path / "pkg" / "manifest.json").write_text(json.dumps(data))
    assert _cli_package.main(["verify", str(tmp_path / "pkg")]) == 1
    assert "heads/qa_dual.json is corrupt" in capsys.readouterr().err  # an edited head fails its checksum

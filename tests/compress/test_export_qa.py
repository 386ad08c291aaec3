"""The QA answer head travels into the fused ONNX graph: ``qa_logits`` equals the PyTorch QA path, is validated
like every output, comes from fine-tuned checkpoints, and a model without a head keeps the three outputs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from egovlpv2_edge import create_model
from egovlpv2_edge.graphs import QA_OUTPUT, graph_specs
from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.training.tasks.heads import QAHead
from egovlpv2_edge.training.tasks.qa import QATask

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from egovlpv2_edge.compress.cli import main  # noqa: E402
from egovlpv2_edge.compress.export import (  # noqa: E402
    ExportMismatchError,
    checkpoint_qa_head,
    export_all,
    export_graph,
    model_specs,
    sample_inputs,
    validate_graph,
)

ANSWERS = ("cup", "box", "bowl", "knife", "plate")


def _qa_head(width: int, answers: int = len(ANSWERS), seed: int = 0) -> QAHead:
    """A QA head with weights large enough that its answers depend clearly on the fused video CLS."""
    head = QAHead(width, answers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return head.eval()


@dataclass
class QAExport:
    model: EgoVLPv2
    head: QAHead
    path: Path


@pytest.fixture(scope="module")
def qa_export(tmp_path_factory: pytest.TempPathFactory) -> QAExport:
    torch.manual_seed(0)
    model = create_model("egovlpv2_test")
    with torch.no_grad():
        for i, gate in enumerate(model.gates()):
            gate.fill_(0.5 + i)
    head = _qa_head(model.cfg.video.width)
    head.train()  # the export must switch the head to eval (dropout off) and restore its mode
    records = export_all(model, tmp_path_factory.mktemp("qa"), graphs=["fused_upper"], qa_head=head)
    assert head.training, "export_all must restore the head's training mode"
    head.eval()
    return QAExport(model, head, records["fused_upper"].path)


def test_fused_graph_with_a_head_returns_qa_logits_of_the_pytorch_qa_path(qa_export: QAExport) -> None:
    model, head = qa_export.model.eval(), qa_export.head
    outputs = [o.name for o in ort.InferenceSession(str(qa_export.path)).get_outputs()]
    assert outputs == ["vtm_logits", "fused_video_cls", "fused_text_cls", QA_OUTPUT]
    assert ort.InferenceSession(str(qa_export.path)).get_outputs()[3].shape[1] == len(ANSWERS)
    specs = graph_specs(model.cfg)
    frames = sample_inputs(model, specs["video_lower"], 4, seed=5)["frames"]
    text = sample_inputs(model, specs["text_lower"], 4, seed=5)
    ids, mask = text["input_ids"], text["attention_mask"]
    task = QATask(model, ANSWERS)
    task.head = head
    with torch.no_grad():
        want = task.eval().logits(frames, ids, mask)  # the fine-tuning task's answer logits, fusion mode
        feed = {"fusion_video_tokens": model.video_lower(frames, "fusion"), "text_tokens": model.text_lower(ids, mask)}
    session = ort.InferenceSession(str(qa_export.path), providers=["CPUExecutionProvider"])
    have = session.run([QA_OUTPUT], {k: v.numpy() for k, v in feed.items()} | {"attention_mask": mask.numpy()})[0]
    assert float(want.abs().max()) > 1.0 and float(want.std(0).max()) > 0.1  # the logits vary with the clip
    np.testing.assert_allclose(have, want.numpy(), rtol=0, atol=1e-4)
    assert (have.argmax(1) == want.argmax(1).numpy()).all()


def test_validation_covers_qa_logits(qa_export: QAExport) -> None:
    spec = model_specs(qa_export.model, qa_export.head)["fused_upper"]
    result = validate_graph(qa_export.model, spec, qa_export.path, qa_head=qa_export.head, batch=4, seed=3)
    assert set(result.diffs) == {"vtm_logits", "fused_video_cls", "fused_text_cls", QA_OUTPUT}
    assert result.diffs[QA_OUTPUT] <= spec.atol
    other = _qa_head(qa_export.model.cfg.video.width, seed=1)  # not the head the graph was exported with
    with pytest.raises(ExportMismatchError, match=rf"'fused_upper'.*'{QA_OUTPUT}' differs from PyTorch"):
        validate_graph(qa_export.model, spec, qa_export.path, qa_head=other)


def test_head_and_spec_must_agree(qa_export: QAExport, tmp_path: Path) -> None:
    model, head = qa_export.model, qa_export.head
    plain = graph_specs(model.cfg)["fused_upper"]
    assert plain.output_names == ["vtm_logits", "fused_video_cls", "fused_text_cls"]  # no head: unchanged graph
    with pytest.raises(ValueError, match="has no 'qa_logits' output but a QA head was passed"):
        export_graph(model, plain, tmp_path / "x.onnx", qa_head=head)
    with pytest.raises(ValueError, match="has 'qa_logits' output but no QA head"):
        validate_graph(model, model_specs(model, head)["fused_upper"], qa_export.path)
    with pytest.raises(ValueError, match="width 80.*width 32.*fusion-mode"):  # a dual-mode head: [video; text]
        export_all(model, tmp_path, graphs=["fused_upper"], qa_head=QAHead(32 + 48, 3))


def test_qa_head_comes_from_a_finetuned_checkpoint_and_the_cli_exports_it(tmp_path: Path, capsys) -> None:
    from egovlpv2_edge.tokenizer import Tokenizer
    from egovlpv2_edge.training.tasks.checkpoint import save_finetuned

    model = create_model("egovlpv2_test")
    tok = Tokenizer.train_bpe([f"C picks up the {a}" for a in ANSWERS] * 8, vocab_size=300, max_length=12)
    tok_file = tok.save(tmp_path / "tokenizer.json")
    head = _qa_head(32)
    vocab = {"answers": list(ANSWERS)}
    ckpt = save_finetuned(tmp_path / "qa.pt", model, tok_file, "qa", "fusion", head, vocab, {}, {}, 3)
    found = checkpoint_qa_head(ckpt)
    assert found is not None and found.answers == ANSWERS and not found.head.training
    assert torch.equal(found.head.net[0].weight, head.net[0].weight)
    dual = save_finetuned(tmp_path / "dual.pt", model, tok_file, "qa", "dual", QAHead(80, 5), vocab, {}, {}, 3)
    assert checkpoint_qa_head(dual) is None  # unfused features: no graph computes them
    assert checkpoint_qa_head(torch.load(ckpt, weights_only=True) | {"task": None}) is None

    out = tmp_path / "onnx"
    argv = ["export", "--preset", "egovlpv2_test", "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*argv, "--graphs", "fused_upper"]) == 0
    assert f"qa_logits over {len(ANSWERS)} answers" in capsys.readouterr().out
    assert json.loads((out / "answer_vocabs.json").read_text()) == {"qa": list(ANSWERS)}
    names = [o.name for o in onnx.load(str(out / "fused_upper.onnx")).graph.output]
    assert names[-1] == QA_OUTPUT
    plain = tmp_path / "plain"
    assert main(["export", "--preset", "egovlpv2_test", "--checkpoint", str(ckpt), "--out", str(plain),
                 "--graphs", "fused_upper", "--no-qa-head"]) == 0  # fmt: skip
    assert QA_OUTPUT not in [o.name for o in onnx.load(str(plain / "fused_upper.onnx")).graph.output]
    assert not (plain / "answer_vocabs.json").exists()


def test_dual_qa_head_is_exported_as_a_numpy_head_equal_to_pytorch(tmp_path: Path, capsys) -> None:
    from egovlpv2_edge._package_qa import read_dual_qa_head
    from egovlpv2_edge.compress.export import checkpoint_dual_qa_head, write_qa_files
    from egovlpv2_edge.training.tasks.checkpoint import save_finetuned

    model = create_model("egovlpv2_test")
    E = model.cfg.heads.embed_dim
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    dual = _qa_head(2 * E, seed=4)
    entry = {"config": dual.config(), "state": dual.state_dict(), "answers": list(ANSWERS), "questions": 7,
             "train_accuracy": 0.5}  # fmt: skip
    ckpt = save_finetuned(tmp_path / "qa.pt", model, tok, "qa", "fusion", _qa_head(model.cfg.video.width),
                          {"answers": list(ANSWERS)}, {}, {}, 1, {"dual_head": entry})  # fmt: skip
    found = checkpoint_dual_qa_head(ckpt, E)
    assert found is not None and found.answers == ANSWERS and found.head.info == {"questions": 7, "train_accuracy": 0.5}
    v = torch.nn.functional.normalize(torch.randn(6, E), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(E), dim=-1)
    with torch.no_grad():
        want = dual(torch.cat([v, t.expand(6, -1)], -1)).numpy()
    np.testing.assert_allclose(found.head.logits(v.numpy(), t.numpy()), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not \\[video; text\\] embeddings of width 25"):
        checkpoint_dual_qa_head(ckpt, E + 1)
    other = checkpoint_qa_head(ckpt)
    with pytest.raises(ValueError, match="list different answers"):  # both heads share the "qa" vocabulary
        write_qa_files(tmp_path / "x", dataclasses.replace(other, answers=("a",) * len(ANSWERS)), found)

    out = tmp_path / "onnx"
    assert main(["export", "--preset", "egovlpv2_test", "--checkpoint", str(ckpt), "--out", str(out),
                 "--graphs", "video_upper"]) == 0  # fmt: skip
    assert f"dual QA head (gates off, on the dual embeddings): {len(ANSWERS)} answers" in capsys.readouterr().out
    written = read_dual_qa_head(out / "qa_dual.json", E, len(ANSWERS))  # the file the package build picks up
    np.testing.assert_allclose(written.logits(v.numpy(), t.numpy()), want, rtol=1e-5, atol=1e-5)
    assert json.loads((out / "answer_vocabs.json").read_text()) == {"qa": list(ANSWERS)}
    plain = tmp_path / "plain"
    assert main(["export", "--preset", "egovlpv2_test", "--checkpoint", str(ckpt), "--out", str(plain),
                 "--graphs", "video_upper", "--no-qa-head"]) == 0  # fmt: skip
    assert not (plain / "qa_dual.json").exists()

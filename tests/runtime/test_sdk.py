"""The SDK and CLI: a file streamed into an index, search and ask, reopening, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import egovlpv2_edge
from egovlpv2_edge.cli import main as egovlp
from egovlpv2_edge.package import PackageError
from egovlpv2_edge.runtime.encoder import QueryError
from egovlpv2_edge.runtime.index import ClipIndex
from egovlpv2_edge.runtime.sdk import Answer, Moment, NoQAHeadError, NotReadyError, PackageMismatchError
from egovlpv2_edge.runtime.sources import SourceOpenError
from egovlpv2_edge.runtime.testing import FakeCameraFactory, FakeCapture

QUERY = "#C C opens the red box"
CHOICES = ["the red box", "the blue cup", "the red bowl"]


@pytest.fixture(scope="module")
def streamed(package: Path, video_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of ``video_file`` (6 s at 10 fps: five 2 s clips every 1 s)."""
    index = tmp_path_factory.mktemp("streamed") / "ix"
    got = []
    with egovlpv2_edge.open(package, video_file, index, on_clip=got.append) as rt:
        rt.start()
        assert rt.wait(60)
        stats = rt.stats()
    assert stats.stream.ended and stats.stream.error is None
    assert [(c.start, c.end) for c in got] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 6.0)]
    assert stats.stream.frames_in == 60 and stats.stream.clips_indexed == 5
    return index


def test_search_returns_moments_on_the_file_clock(package: Path, streamed: Path) -> None:
    with egovlpv2_edge.open(package, index=streamed) as rt:
        moments = rt.search(QUERY, k=3)
        assert len(moments) == 3 and all(isinstance(m, Moment) for m in moments)
        assert [m.score for m in moments] == sorted((m.score for m in moments), reverse=True)
        thumb = cv2.imdecode(np.frombuffer(moments[0].thumbnail, np.uint8), cv2.IMREAD_COLOR)
        assert thumb.shape == (48, 64, 3)
        late = rt.search(QUERY, k=10, since=4.5)  # clips ending at or after 4.5 s
        assert sorted((m.start, m.end) for m in late) == [(3.0, 5.0), (4.0, 6.0)]
        with pytest.raises(dataclasses.FrozenInstanceError):
            moments[0].score = 1.0  # type: ignore[misc]


def test_ask_scores_choices_with_the_fused_layers(package: Path, streamed: Path) -> None:
    with egovlpv2_edge.open(package, index=streamed) as rt:
        answer = rt.ask("what did C open?", CHOICES, k=3)
        assert isinstance(answer, Answer) and answer.answer in CHOICES
        assert answer.scores[0][0] == answer.answer and answer.confidence == pytest.approx(answer.scores[0][1])
        assert sum(p for _, p in answer.scores) == pytest.approx(1.0)
        assert len(answer.evidence) == 3 and all(0 <= m.score <= 1 for m in answer.evidence)
        recent = rt.ask("what did C open?", CHOICES, k=5, window=1.5)  # clips ending in the last 1.5 s
        assert sorted(m.start for m in recent.evidence) == [3.0, 4.0]
        # the gate switch needs no reload: search (gates off) after ask (gates on) uses the same sessions
        sessions = dict(rt.encoder.sessions)
        assert rt.search(QUERY, k=1) and rt.encoder.sessions == sessions
        assert {"search", "ask"} <= set(rt.stats().latency)


def _declare_qa_head(rt) -> None:
    """Make the open runtime believe its fused graph has a 3-answer QA head (cup, box, bowl)."""
    spec = rt.encoder.specs["fused_upper"]
    qa = dataclasses.replace(spec.outputs[0], name="qa_logits", shape=("batch", 3))
    rt.encoder.specs = {**rt.encoder.specs, "fused_upper": dataclasses.replace(spec, outputs=(*spec.outputs, qa))}
    rt.package.manifest = dataclasses.replace(rt.package.manifest, answer_vocabs={"qa": ("cup", "box", "bowl")})


def test_ask_uses_a_qa_head_when_the_package_has_one(package: Path, streamed: Path) -> None:
    with egovlpv2_edge.open(package, index=streamed) as rt:
        _declare_qa_head(rt)

        def with_head(tokens: np.ndarray, text: str) -> dict[str, np.ndarray]:  # what a graph with a QA head gives
            B = tokens.shape[0]
            return {"vtm_logits": np.zeros((B, 2), np.float32), "qa_logits": np.tile([0.0, 3.0, 1.0], (B, 1))}

        rt.encoder.fused = with_head
        answer = rt.ask("what did C open?")
    assert answer.answer == "box" and answer.confidence == pytest.approx(np.exp(3) / (1 + np.exp(3) + np.exp(1)))
    assert [c for c, _ in answer.scores] == ["box", "bowl", "cup"]


def _assert_mixture(answer, answers: list[str], mixed) -> None:
    """``answer.scores`` rank ``answers`` as the expected mixture ``mixed`` (a tensor, one probability each) does."""
    want = sorted(zip(answers, mixed.tolist(), strict=True), key=lambda cp: -cp[1])
    assert want[0][1] > want[1][1] + 0.05  # a clear answer, so the top answers must agree
    assert [c for c, _ in answer.scores] == [c for c, _ in want] and answer.answer == want[0][0]
    np.testing.assert_allclose([p for _, p in answer.scores], [p for _, p in want], rtol=0, atol=1e-4)
    assert answer.confidence == pytest.approx(want[0][1], abs=1e-4)


def test_ask_without_choices_answers_with_the_packaged_qa_head(
    qa_package: tuple[Path, object], exported: tuple[Path, object, object], streamed: Path, capsys
) -> None:
    import torch

    from tests.runtime.conftest import QA_ANSWERS

    path, head = qa_package
    _, model, tok = exported
    question = "what did C open?"
    with egovlpv2_edge.open(path, index=streamed) as rt:  # the same video graphs as the package that indexed
        answer = rt.ask(question, k=3)
        cached = rt.index.get_tokens([m.id for m in answer.evidence])
    assert answer.answer in QA_ANSWERS and len(answer.evidence) == 3
    # PyTorch on the same cached tokens: the head on each clip's fused video CLS, mixed by the clips' VTM match
    batch = tok.encode([question], max_length=model.cfg.text.max_length)
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    video = torch.from_numpy(np.stack([cached[m.id] for m in answer.evidence]).astype(np.float32))  # (3, T, Dv)
    with torch.no_grad():
        text = model.eval().text_lower(ids, mask).expand(3, -1, -1)
        out = model.fusion_heads(*model.fuse_upper(video, text, mask.expand(3, -1)))
        probs = torch.softmax(head(out.video_cls).double(), -1)  # (3, A)
    odds = (out.vtm_logits[:, 1] - out.vtm_logits[:, 0]).double()
    _assert_mixture(answer, QA_ANSWERS, (torch.softmax(odds, 0)[:, None] * probs).sum(0))
    assert [m.score for m in answer.evidence] == pytest.approx(sorted(torch.sigmoid(odds).tolist(), reverse=True))
    with egovlpv2_edge.open(path, index=streamed) as rt:  # choices still go to the VTM head
        assert rt.ask(question, CHOICES, k=3).answer in CHOICES
    assert egovlp(["ask", "--package", str(path), "--index", str(streamed), question, "-k", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"answer: {answer.answer}  (confidence {answer.confidence:.2f}, fused)")


def test_ask_answers_with_the_gates_off_head_from_the_stored_embeddings(
    dual_package: tuple[Path, object], exported: tuple[Path, object, object], streamed: Path, capsys
) -> None:
    import torch

    from egovlpv2_edge.runtime.encoder import QueryError
    from tests.runtime.conftest import QA_ANSWERS

    path, head = dual_package
    _, model, tok = exported
    question = "what did C open?"
    with egovlpv2_edge.open(path, index=streamed) as rt:
        answer = rt.ask(question, k=3)  # auto: the gates-off head
        vectors = rt.index.get_vectors([m.id for m in answer.evidence])
        fused = rt.ask(question, k=3, head="fused")
        with pytest.raises(ValueError, match="head='both'; valid: auto, fused, dual"):
            rt.ask(question, head="both")
    assert answer.head == "dual" and fused.head == "fused" and len(answer.evidence) == 3
    # PyTorch: the head on [clip embedding; question embedding] per clip, mixed by softmax(cosine / temperature)
    batch = tok.encode([question], max_length=model.cfg.text.max_length)
    with torch.no_grad():
        q = model.eval().encode_text(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                                     normalize=True)[0]  # fmt: skip
        v = torch.from_numpy(np.stack([vectors[m.id] for m in answer.evidence]))  # (3, E), best match first
        cos = (v @ q).double()
        probs = torch.softmax(head(torch.cat([v, q.expand(3, -1)], -1)).double(), -1)
    assert [m.score for m in answer.evidence] == pytest.approx(cos.tolist(), abs=1e-4)
    assert cos.tolist() == sorted(cos.tolist(), reverse=True)
    weights = torch.softmax(cos / model.cfg.heads.temperature, 0)[:, None]
    _assert_mixture(answer, QA_ANSWERS, (weights * probs).sum(0))
    assert egovlp(["ask", "--package", str(path), "--index", str(streamed), question, "-k", "3", "--head", "dual"]) == 0
    assert capsys.readouterr().out.startswith(f"answer: {answer.answer}  (confidence {answer.confidence:.2f}, dual)")
    with egovlpv2_edge.open(path, index=streamed) as rt:
        picked = rt.ask(question, CHOICES, k=3)  # choices among the head's answers: its distribution restricted
        assert rt.ask(question, CHOICES, k=3, head="fused").head == "vtm"
        assert rt.ask(question, ["a red box", "a blue cup"], k=3).head == "vtm"  # free-text choices: VTM
        with pytest.raises(QueryError, match="choices \\['a red box'\\] are not answers of the gates-off QA head"):
            rt.ask(question, ["a red box", "the blue cup"], k=3, head="dual")
    assert picked.head == "dual" and picked.evidence == answer.evidence
    sub = probs[:, [QA_ANSWERS.index(c) for c in CHOICES]]
    _assert_mixture(picked, CHOICES, (weights * torch.softmax(torch.log(sub), -1)).sum(0))


def test_ask_names_the_missing_qa_head(package: Path, qa_package: tuple[Path, object], streamed: Path) -> None:
    from egovlpv2_edge.runtime.sdk import NoQAHeadError

    with egovlpv2_edge.open(qa_package[0], index=streamed) as rt:
        assert rt.ask("what did C open?", k=2).head == "fused"  # auto without a gates-off head
        with pytest.raises(NoQAHeadError, match="has no gates-off QA head 'qa_dual' \\(its QA heads: fused\\)"):
            rt.ask("what did C open?", head="dual")
    with egovlpv2_edge.open(package, index=streamed) as rt:
        with pytest.raises(NoQAHeadError, match="pass choices"):
            rt.ask("what did C open?")


def test_ask_mixes_the_clips_answers_by_how_well_they_match(package: Path, streamed: Path) -> None:
    with egovlpv2_edge.open(package, index=streamed) as rt:
        _declare_qa_head(rt)
        qa_logits = np.array([[0.0, 4.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 4.0]], np.float32)  # clip i says answer i'
        vtm = np.array([[0.0, 2.0], [0.0, 1.0], [3.0, 0.0]], np.float32)  # log-odds 2, 1, -3: clip 0 matches best
        rt.encoder.fused = lambda tokens, text: {"vtm_logits": vtm, "qa_logits": qa_logits}
        answer = rt.ask("what did C open?", k=3)
    weights = np.exp([2.0, 1.0, -3.0]) / np.exp([2.0, 1.0, -3.0]).sum()
    probs = np.exp(qa_logits) / np.exp(qa_logits).sum(1, keepdims=True)
    mixed = weights @ probs  # (3,): box from the best-matching clip outweighs cup
    assert answer.answer == "box" and answer.confidence == pytest.approx(mixed[1])
    assert dict(answer.scores) == pytest.approx(dict(zip(["cup", "box", "bowl"], mixed, strict=True)))
    assert [m.score for m in answer.evidence] == pytest.approx([1 / (1 + np.exp(-x)) for x in (2.0, 1.0, -3.0)])


def test_query_errors_name_the_problem(package: Path, streamed: Path, caplog: pytest.LogCaptureFixture) -> None:
    with egovlpv2_edge.open(package, index=streamed) as rt:
        for bad in ("", "   "):
            with pytest.raises(QueryError, match="non-empty"):
                rt.search(bad)
        with pytest.raises(QueryError, match="1,000,000 characters; the limit is 2,000"):
            rt.search("a" * 1_000_000)
        with pytest.raises(QueryError, match="at least two choices"):
            rt.ask("what did C open?", ["the red box"])
        with pytest.raises(QueryError, match="list of answers"):
            rt.ask("what did C open?", "the red box")  # type: ignore[arg-type]
        with pytest.raises(NoQAHeadError, match="no QA head.*pass choices"):
            rt.ask("what did C open?")
        with pytest.raises(ValueError, match="window must be a positive"):
            rt.ask("what did C open?", CHOICES, window=0)
        with caplog.at_level(logging.WARNING):
            assert rt.search(" ".join(["C opens the red box"] * 10), k=1)  # over-long in tokens: truncated
        assert "truncated" in caplog.text


def test_question_before_any_clip_is_a_clear_error(package: Path, tmp_path: Path) -> None:
    with egovlpv2_edge.open(package, 0, tmp_path / "ix", capture_factory=FakeCameraFactory()) as rt:
        assert rt.search(QUERY) == []
        with pytest.raises(NotReadyError, match="no clip is indexed yet"):
            rt.ask("what did C open?", CHOICES)


def test_unopenable_sources_are_named(package: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        egovlpv2_edge.open(package, tmp_path / "nope.mp4", tmp_path / "ix")
    absent = lambda target, api: FakeCapture([0], frames=0, opened=False)  # noqa: E731 - a camera that is not there
    with pytest.raises(SourceOpenError, match="could not open device source '3'.*v4l2-ctl"):
        egovlpv2_edge.open(package, 3, tmp_path / "ix", capture_factory=absent)
    assert not (tmp_path / "ix").exists()  # a source that does not open leaves no empty index behind
    egovlpv2_edge.open(package, 0, tmp_path / "ix", capture_factory=FakeCameraFactory()).close()
    with pytest.raises(SourceOpenError):
        egovlpv2_edge.open(package, 3, tmp_path / "ix", capture_factory=absent)
    ClipIndex.open(tmp_path / "ix", 24).close()  # a failed open leaves an existing index unlocked


def test_bad_packages_and_indexes_are_named(package: Path, streamed: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(package, corrupt)
    graph = next((corrupt / "graphs").glob("video_upper*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="video_upper"):
        egovlpv2_edge.open(corrupt, index=streamed)
    with pytest.raises(FileNotFoundError, match="egovlp run"):
        egovlpv2_edge.open(package, index=tmp_path / "missing")
    ClipIndex.open(tmp_path / "dim8", 8).close()
    with pytest.raises(PackageMismatchError, match="dim=8"):
        egovlpv2_edge.open(package, index=tmp_path / "dim8")
    other = tmp_path / "other"
    shutil.copytree(streamed, other)
    stored = json.loads((other / "package.json").read_text())
    stored["graphs"]["video_lower"] = "0" * 64
    (other / "package.json").write_text(json.dumps(stored | {"name": "someone_else"}))
    with pytest.raises(PackageMismatchError, match="written by package 'someone_else'.*another directory"):
        egovlpv2_edge.open(package, index=other)


def test_cli_run_search_ask_stats(package: Path, video_file: Path, tmp_path: Path, capsys) -> None:
    index = str(tmp_path / "ix")
    common = ["--package", str(package), "--index", index]
    assert egovlp(["run", *common, "--source", str(video_file)]) == 0
    out = capsys.readouterr()
    assert "indexed 5 clips (0 dropped) from 60 frames" in out.out and "clips 5" in out.err
    assert egovlp(["search", *common, QUERY, "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["rank", "start"] and len(lines) == 3
    assert egovlp(["ask", *common, "what did C open?", "--choice", "the red box", "--choice", "the cup"]) == 0
    assert capsys.readouterr().out.startswith("answer: the ")
    assert egovlp(["stats", *common]) == 0
    assert "5 clips" in capsys.readouterr().out
    assert egovlp(["ask", *common, "what did C open?"]) == 2
    assert "pass choices" in capsys.readouterr().err
    assert egovlp(["search", "--package", str(tmp_path / "nopkg"), "--index", index, QUERY]) == 2
    assert "not found" in capsys.readouterr().err

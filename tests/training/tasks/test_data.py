"""QA and NLQ data: the synthetic splits (content, determinism) and the Ego4D NLQ loader on a fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from egovlpv2_edge.training.data.nlq import NLQFormatError, read_nlq, window_starts
from egovlpv2_edge.training.data.qa import (
    QUESTION_TYPES,
    QADataset,
    QAFormatError,
    _candidates,
    collate_qa,
    read_qa,
    verb_answer,
)
from egovlpv2_edge.training.data.synth import SynthConfig, generate_dataset, write_task_files
from egovlpv2_edge.training.data.taxonomy import noun_by_key, verb_by_key

from .conftest import FIXTURES

TASK_FILES = ("qa.json", "nlq_train.json", "nlq_val.json", "nlq_test.json")


def _actions(root: Path) -> dict[tuple[str, int], dict]:
    rows = [json.loads(line) for line in (root / "actions.jsonl").read_text().splitlines()]
    return {(a["video_uid"], a["index"]): a for a in rows}


def test_qa_questions_span_consecutive_actions_and_need_the_window(small_data) -> None:
    qa = read_qa(small_data / "qa.json")
    actions = _actions(small_data)
    assert set(QUESTION_TYPES) == {q.type for q in qa.items}  # every type occurs
    for q in qa.items:
        assert q.answer in qa.answer_set and q.choices[q.answer_choice] == q.answer
        assert len(set(q.choices)) == len(q.choices) >= 4
        idx = list(q.actions)
        assert 2 <= len(idx) <= 3 and idx == list(range(idx[0], idx[0] + len(idx)))
        window = [actions[(q.video_uid, i)] for i in idx]
        assert q.start == window[0]["start"] and q.end == window[-1]["end"]
        if q.type == "object":  # the window shows several objects, so the verb must pick the right one
            assert len({a["noun"] for a in window}) > 1
        if q.type == "count":
            assert q.answer == ("one", "two", "three")[len({a["noun"] for a in window}) - 1]
    meta = json.loads((small_data / "meta.json").read_text())
    train_videos = set(meta["splits"]["train"]["video_uids"])
    assert all((q.video_uid in train_videos) == (q.split == "train") for q in qa.items)


def test_order_questions_answer_the_neighbouring_action(small_data) -> None:
    qa, actions = read_qa(small_data / "qa.json"), _actions(small_data)
    order = [q for q in qa.items if q.type == "order"]
    assert order

    def phrase(a: dict) -> str:
        return verb_by_key(a["verb"]).templates[0].format(n=noun_by_key(a["noun"]).name)

    for q in order:
        window = [actions[(q.video_uid, i)] for i in q.actions]
        named = [k for k, a in enumerate(window) if q.question.endswith(f"C {phrase(a)}?")]
        assert len(named) == 1, q.question
        k = named[0]
        others = [a for j, a in enumerate(window) if j != k]  # leaving out the named action leaves two candidates
        assert len(window) == 3
        if "right after" in q.question:  # the verb of the next action
            assert q.answer == verb_answer(window[k + 1]["verb"])
            assert len({a["verb"] for a in others}) == 2
        else:  # "which object did C handle before ...": the object of the previous action
            assert q.answer == noun_by_key(window[k - 1]["noun"]).name
            assert len({a["noun"] for a in others}) == 2


def test_new_splits_are_deterministic_and_rebuildable(tmp_path) -> None:
    cfg = SynthConfig(videos=3, seed=9, size=32, fps=10, chunk_seconds=5, min_actions=4, max_actions=5, workers=1)
    a, b = tmp_path / "a", tmp_path / "b"
    generate_dataset(a, cfg)
    generate_dataset(b, cfg)
    for name in TASK_FILES:
        if (a / name).exists() or (b / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    before = {n: (a / n).read_bytes() for n in TASK_FILES if (a / n).exists()}
    for n in before:
        (a / n).unlink()
    write_task_files(a)  # an older dataset gains the same files from actions.jsonl
    assert {n: (a / n).read_bytes() for n in before} == before


def test_qa_dataset_samples_the_whole_window(small_data) -> None:
    qa = read_qa(small_data / "qa.json")
    meta = json.loads((small_data / "meta.json").read_text())
    ds = QADataset(qa, small_data / "videos", "train", 2, 32, "eval", meta)
    item = ds[0]
    assert item["video"].shape == (2, 3, 32, 32) and item["video"].dtype == torch.float32
    assert qa.answer_set[item["answer"]] == ds.items[0].answer
    with pytest.raises(ValueError, match="no QA items in split"):
        QADataset(qa, small_data / "videos", "nope", 2, 32)


def test_training_windows_ask_every_question_they_can_answer_and_held_out_windows_one(small_data) -> None:
    qa, actions = read_qa(small_data / "qa.json"), _actions(small_data)
    windows: dict[tuple, list] = {}
    for q in qa.items:
        windows.setdefault((q.split, q.video_uid, q.actions), []).append(q)
    held_out = [qs for key, qs in windows.items() if key[0] != "train"]
    assert held_out and all(len(qs) == 1 for qs in held_out)
    train = [qs for key, qs in windows.items() if key[0] == "train"]
    assert max(len(qs) for qs in train) > 1
    for qs in train:
        window = [actions[(qs[0].video_uid, i)] for i in qs[0].actions]
        answerable = {(c[0], c[1]) for cands in _candidates(window).values() for c in cands}
        assert sorted((q.question, q.answer) for q in qs) == sorted(answerable)


def test_qa_dataset_windows_group_the_questions_of_one_clip(small_data) -> None:
    meta = json.loads((small_data / "meta.json").read_text())
    ds = QADataset(read_qa(small_data / "qa.json"), small_data / "videos", "train", 2, 32, "eval", meta)
    first, of = ds.windows()
    assert len(first) < len(of) == len(ds)
    keys = [ds.window(i) for i in first]
    assert len(set(keys)) == len(keys) and first == sorted(first)
    assert all(ds.window(i) == keys[w] for i, w in enumerate(of))
    i, j = next((i, j) for i in range(len(ds)) for j in range(i + 1, len(ds)) if of[i] == of[j])
    assert ds.items[i].question != ds.items[j].question
    assert torch.equal(ds[i]["video"], ds[j]["video"])  # eval clips of one window are the same frames
    assert {k: v for k, v in ds[j].items() if k != "video"} == ds.fields(j)


def test_qa_feature_set_encodes_each_window_once_and_equals_the_direct_features(small_data, pretrained,
                                                                                monkeypatch) -> None:  # fmt: skip
    from egovlpv2_edge.training.tasks.checkpoint import load_backbone
    from egovlpv2_edge.training.tasks.qa import dual_features, embedding_features, qa_feature_set

    model, tok = load_backbone(pretrained)
    v = model.cfg.video
    meta = json.loads((small_data / "meta.json").read_text())
    ds = QADataset(read_qa(small_data / "qa.json"), small_data / "videos", "train", v.num_frames, v.img_size,
                   "eval", meta)  # fmt: skip
    clips, lower = [], model.video_lower
    texts, text_lower = [], model.text_lower
    monkeypatch.setattr(model, "video_lower", lambda f, s="dual": clips.append(len(f)) or lower(f, s))
    monkeypatch.setattr(model, "text_lower", lambda i, m: texts.append(len(i)) or text_lower(i, m))
    x = qa_feature_set(model, tok, ds, 12, "dual")
    assert sum(clips) == len(ds.windows()[0]) < len(ds)
    assert sum(texts) == len({q.question for q in ds.items}) < len(ds)  # each distinct question once
    monkeypatch.undo()
    repeated = next(i for i, q in enumerate(ds.items) if q.question in {p.question for p in ds.items[:i]})
    pick = [0, 1, repeated, len(ds) - 1]
    b = collate_qa([ds[i] for i in pick])
    t = tok.encode(b["question"], max_length=12)
    ids, mask = torch.from_numpy(t.input_ids), torch.from_numpy(t.attention_mask)
    with torch.no_grad():
        assert torch.allclose(x[pick], dual_features(model, b["video"], ids, mask), atol=1e-5)
        emb = qa_feature_set(model, tok, ds, 12, "embedding")
        assert torch.allclose(emb[pick], embedding_features(model, b["video"], ids, mask), atol=1e-5)
    with pytest.raises(ValueError, match="valid: dual, embedding"):
        qa_feature_set(model, tok, ds, 12, "fused")


def test_qa_reader_rejects_bad_answers(tmp_path, small_data) -> None:
    data = json.loads((small_data / "qa.json").read_text())
    data["items"][0]["answer"] = "a purple elephant"
    (tmp_path / "qa.json").write_text(json.dumps(data))
    with pytest.raises(QAFormatError, match="item 0: answer 'a purple elephant' is not in the answer_set"):
        read_qa(tmp_path / "qa.json")


def test_nlq_loader_on_the_official_format_fixture() -> None:
    clips = read_nlq(FIXTURES / "nlq_small.json")
    assert [c.clip_uid[-1] for c in clips] == ["1", "2", "3"]
    first = clips[0]
    assert first.video_start == 30.0 and first.duration == 60.0 and first.split == "val"
    # the query without text is skipped; the zero-length window is kept; the end 0.02 s past the clip is clamped
    assert [q.query for q in first.queries] == [
        "where did I put the blue kettle?", "what fruit did I slice?", "where did I see the striped mat?"]
    assert (first.queries[1].start, first.queries[1].end) == (25.0, 25.0)
    assert first.queries[2].end == 60.0
    assert first.queries[0].annotation_uid.endswith("1") and first.queries[2].annotation_uid.endswith("2")
    assert sum(len(c.queries) for c in clips) == 5
    with pytest.raises(ValueError, match="no query text"):
        read_nlq(FIXTURES / "nlq_small.json", skip_bad=False)


def test_nlq_loader_errors_name_the_place(tmp_path) -> None:
    data = json.loads((FIXTURES / "nlq_small.json").read_text())
    del data["videos"][1]["clips"][0]["video_end_sec"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(NLQFormatError, match=r"video 1 .* clip 0: missing 'video_end_sec'"):
        read_nlq(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        read_nlq(tmp_path / "missing.json")


def test_synthetic_nlq_uses_the_same_loader_and_unique_actions(small_data) -> None:
    actions = _actions(small_data)
    total = 0
    for split in ("train", "val", "test"):
        for clip in read_nlq(small_data / f"nlq_{split}.json"):
            pairs = Counter((a["verb"], a["noun"]) for (uid, _), a in actions.items() if uid == clip.video_uid)
            for q in clip.queries:
                total += 1
                match = [a for (uid, _), a in actions.items() if uid == clip.video_uid
                         and (a["start"], a["end"]) == (round(q.start, 3), round(q.end, 3))]  # fmt: skip
                assert len(match) == 1 and pairs[(match[0]["verb"], match[0]["noun"])] == 1
                assert q.query.startswith("when did I ")
    assert total > 0
    assert list(window_starts(5.0, 2.0)) == [0.0, 2.0, 4.0]

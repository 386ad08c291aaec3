"""EgoClip csv and EgoMCQ json: round trips and clear errors on malformed input."""

from __future__ import annotations

import json
import logging

import pytest

from egovlpv2_edge.training.data.egoclip import (
    ClipRecord,
    EgoClipFormatError,
    EgoMCQFormatError,
    read_egoclip,
    read_egomcq,
    write_egoclip,
)


def _rec(i: int, **kw) -> ClipRecord:
    base = dict(clip_idx=i, video_uid="vid-a", video_dur=120.0, narration_source="narration_pass_1", narration_ind=i,
                narration_time=61.5 + i, clip_start=60.0 + i, clip_end=63.0 + i, clip_text="#C C opens the green box",
                tag_verb=(2,), tag_noun=(8, 40))  # fmt: skip
    return ClipRecord(**{**base, **kw})


def test_round_trip_and_reference_layout(tmp_path) -> None:
    recs = [_rec(0), _rec(1, clip_text='#C C says "hi"\tto the cup')]
    path = tmp_path / "egoclip.csv"
    assert write_egoclip(path, recs) == 2
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == [
        "clip_idx",
        "video_uid",
        "video_dur",
        "narration_source",
        "narration_ind",
        "narration_time",
        "clip_start",
        "clip_end",
        "clip_text",
        "tag_verb",
        "tag_noun",
    ]
    assert lines[1].split("\t")[-2:] == ["[2]", "[8, 40]"]
    table = read_egoclip(path)
    assert list(table) == recs and table.skipped == 0 and len(table) == 2
    assert table[0].segment_id == "vid-a_1"


def _write_with_bad_rows(tmp_path):
    path = tmp_path / "egoclip.csv"
    write_egoclip(path, [_rec(0), _rec(1), _rec(2), _rec(3)])
    lines = path.read_text().splitlines()
    cells = lines[2].split("\t")
    cells[6] = "soon"  # clip 1: clip_start is not a number
    lines[2] = "\t".join(cells)
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\t[8, oops]"  # clip 3: bad noun tags
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_row_names_file_line_and_problem(tmp_path) -> None:
    path = _write_with_bad_rows(tmp_path)
    with pytest.raises(EgoClipFormatError) as err:
        read_egoclip(path)
    msg = str(err.value)
    assert str(path) in msg and "line 3" in msg and "'clip_start'" in msg and "'soon'" in msg and "skip_bad" in msg


def test_skip_bad_warns_per_row_and_counts(tmp_path, caplog) -> None:
    path = _write_with_bad_rows(tmp_path)
    with caplog.at_level(logging.WARNING, logger="egovlpv2_edge.training.data.egoclip"):
        table = read_egoclip(path, skip_bad=True)
    assert [r.clip_idx for r in table] == [0, 2] and table.skipped == 2
    per_row = [r.getMessage() for r in caplog.records if "skipping bad row" in r.getMessage()]
    assert len(per_row) == 2 and "line 3" in per_row[0] and "line 5" in per_row[1] and "tag_noun" in per_row[1]
    assert any("skipped 2 bad row(s) of 4" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda c: c[:5], "expected 11 tab-separated cells, found 5"),
        (lambda c: c[:6] + ["5.0", "4.0"] + c[8:], "clip_start < clip_end"),
        (lambda c: c[:1] + [""] + c[2:], "'video_uid' is empty"),
        (lambda c: c[:9] + ["3"] + c[10:], "'tag_verb' = '3' must be a list"),
    ],
)
def test_row_problems(tmp_path, edit, problem) -> None:
    path = tmp_path / "egoclip.csv"
    write_egoclip(path, [_rec(0)])
    head, row = path.read_text().splitlines()
    path.write_text(head + "\n" + "\t".join(edit(row.split("\t"))) + "\n")
    with pytest.raises(EgoClipFormatError, match=problem):
        read_egoclip(path)


def test_bad_header_and_missing_file(tmp_path) -> None:
    path = tmp_path / "egoclip.csv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(EgoClipFormatError, match="line 1: header"):
        read_egoclip(path)
    with pytest.raises(FileNotFoundError, match="egovlp data synth"):
        read_egoclip(tmp_path / "nope.csv")


def test_egomcq_validation(tiny, tmp_path) -> None:
    data = json.loads((tiny / "egomcq.json").read_text())
    assert sorted(data, key=int) == [str(i) for i in range(len(data))]
    key = "0"
    wrong = (data[key]["answer"] + 1) % 5
    bad = dict(data)
    bad[key] = {**data[key], "answer": wrong}
    path = tmp_path / "egomcq.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(EgoMCQFormatError, match=f"entry '0': answer {wrong} text"):
        read_egomcq(path)
    bad[key] = {**data[key], "types": 3}
    path.write_text(json.dumps(bad))
    with pytest.raises(EgoMCQFormatError, match="'types' = 3"):
        read_egomcq(path)

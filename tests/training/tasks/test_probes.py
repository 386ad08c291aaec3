"""The learnability probes (``benchmarks/probe_learnability.py``) run end to end on the tiny preset and data."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


def _probe():
    spec = importlib.util.spec_from_file_location("probe_learnability", ROOT / "benchmarks" / "probe_learnability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _table(text: str) -> list[list[float]]:
    return [[float(c) for c in row.strip("|").split("|")] for row in re.findall(r"^\| \d+ \|.*\|$", text, re.M)]


def test_direction_probe_trains_the_encoder_and_the_cnn(small_data, capsys) -> None:
    probe = _probe()
    common = ["direction", "--data", str(small_data), "--steps", "2", "--every", "1", "--batch", "4"]
    assert probe.main([*common, "--preset", "egovlpv2_test"]) == 0
    rows = _table(capsys.readouterr().out)
    assert [r[0] for r in rows] == [0, 1, 2] and all(0 <= r[2] <= 1 and 0 <= r[3] <= 1 for r in rows)
    assert rows[1][1] > 0  # a real loss after the first step (nan before any)
    assert probe.main([*common, "--cnn", "--frames", "4", "--size", "32"]) == 0
    assert "direction probe, the 3D CNN, 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [[], ["--standardize", "--video-lr-mult", "0"]])
def test_vtm_probe_trains_the_fused_layers_from_a_checkpoint(extra, small_data, pretrained, capsys) -> None:
    probe = _probe()
    argv = ["vtm", "--data", str(small_data), "--checkpoint", str(pretrained), "--steps", "2", "--every", "2",
            "--batch", "4", "--negatives", "hard", *extra]  # fmt: skip
    assert probe.main(argv) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert [r[0] for r in rows] == [0, 2] and all(0 <= r[2] <= 1 and 0 <= r[3] <= 1 for r in rows)
    assert f"vtm probe, {pretrained}, 2 steps" in out


def test_direction_probe_labels_a_clip_by_the_verb_it_shows(small_data) -> None:
    """A pick up played backwards shows a put down: the probe plays clips of each pair's second verb backwards so
    that label 1 always means "shows the first verb" (a reversed clip of either verb is then the other label)."""
    probe = _probe()
    ids = {}
    for line in (small_data / "verbs.csv").read_text().splitlines()[1:]:
        ids[line.split(",")[1]] = int(line.split(",")[0])
    second = probe._second_of_pair(small_data)
    assert ids["put_down"] in second and ids["close"] in second and ids["pull"] in second
    assert ids["pick_up"] not in second and ids["open"] not in second and ids["stir"] not in second
    video = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2)
    clips = {"video": video, "key": [((ids["pick_up"],), [0]), ((ids["put_down"],), [0])]}
    out = probe._as_first_verb(clips, second)
    assert torch.equal(out[0], video[0]) and torch.equal(out[1], video[1].flip(0))


def test_qa_probe_reads_a_checkpoint_three_ways(small_data, pretrained, capsys) -> None:
    probe = _probe()
    argv = ["qa", "--data", str(small_data), "--checkpoint", str(pretrained), "--epochs", "1", "--head-epochs", "2"]
    assert probe.main(argv) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (answer prior|QA head|reader)[^|]*\|(.*)\|$", out, re.M)
    assert [r[0] for r in rows] == ["answer prior", "QA head", "QA head", "reader"]
    for _, cells in rows:
        values = [float(c) for c in cells.split("|") if c.strip() != "-"]
        assert values and all(0 <= x <= 100 for x in values)
    assert "reader epoch 1/1" in out and f"qa probe, {pretrained}" in out

"""The end-to-end demo on a tiny setting (minutes on 2 cores: marked slow, run with `pytest -m slow`)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_stages(tmp_path, capsys) -> None:
    from egovlpv2_edge._demo import main

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--videos", "6", "--steps", "3", "--batch-size", "8"]) == 0
    first = capsys.readouterr().out
    assert "[6/6] on-device index and queries: done" in first
    for name in ("report.md", "eval.json", "runtime.json", "retrieved_moments.png", "teacher/curves.png"):
        assert (out / name).is_file(), name
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["index"]["clips"] > 0 and len(runtime["answers"]) == 4
    assert main(["--out", str(out), "--videos", "6", "--steps", "3", "--batch-size", "8"]) == 0
    second = capsys.readouterr().out
    assert second.count("reusing") == 6

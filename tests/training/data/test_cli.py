"""``egovlp data`` subcommands: synth, contact-sheet, inspect."""

from __future__ import annotations

import json

import cv2

from egovlpv2_edge.training.data._sheet import sheet_size
from egovlpv2_edge.training.data.cli import main


def test_synth_contact_sheet_and_inspect(tmp_path, capsys) -> None:
    out = tmp_path / "data"
    args = ["synth", "--out", str(out), "--videos", "3", "--seed", "4", "--size", "32", "--fps", "8",
            "--chunk-seconds", "5", "--min-actions", "3", "--max-actions", "4", "--workers", "1",
            "--holdout-pairs", "pick_up:blue_cup", "--no-head-motion"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 videos" in printed and "clips per split" in printed and "EgoMCQ" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["fps"] == 8 and meta["size"] == 32 and meta["holdout_pairs"] == ["pick_up:blue_cup"]
    assert meta["config"]["head_motion"] is False

    png = tmp_path / "sheet.png"
    assert main(["contact-sheet", "--data", str(out), "--out", str(png), "--n", "5", "--frames", "3",
                 "--frame-size", "40", "--cols", "2"]) == 0  # fmt: skip
    img = cv2.imread(str(png))
    assert img is not None and (img.shape[1], img.shape[0]) == sheet_size(5, 3, 40, 2) == (3 * 2 * 40 + 12, 3 * 56 + 16)
    assert img[:, :, :].std() > 10  # not a blank page

    assert main(["inspect", "--data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 videos" in printed and "split train" in printed and "held-out pairs ['pick_up:blue_cup']" in printed


def test_synth_rejects_bad_pair(tmp_path, capsys) -> None:
    code = main(["synth", "--out", str(tmp_path), "--holdout-pairs", "fold:red_cup"])
    assert code == 2
    assert "fold cannot act on red_cup" in capsys.readouterr().err
    assert not (tmp_path / "egoclip.csv").exists()

"""The ``egovlp`` command: dispatch, errors that list the valid choices, the model subcommand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from egovlpv2_edge.cli import COMMANDS, main


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_names_the_valid_ones(capsys) -> None:
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "'trian'" in err and "train" in err and "demo" in err


def test_model_list_and_info(capsys) -> None:
    assert main(["model", "list"]) == 0
    assert "egovlpv2_base" in capsys.readouterr().out
    assert main(["model", "info", "egovlpv2_test", "--no-macs"]) == 0
    assert "params total" in capsys.readouterr().out
    assert main(["model", "info", "egovlpv2_nope"]) == 2


def test_python_dash_m_works() -> None:
    res = subprocess.run([sys.executable, "-m", "egovlpv2_edge", "model", "list"], capture_output=True, text=True)
    assert res.returncode == 0 and "egovlpv2_edge" in res.stdout


def test_package_build_reads_export_and_precision_names(tmp_path):
    """``<graph>.onnx`` (what ``compress export`` writes) is fp32; ``<graph>.<precision>.onnx`` names a precision."""
    from egovlpv2_edge._cli_package import scan_graphs_dir
    from egovlpv2_edge.package import PackageError

    for name in ("video_lower.onnx", "video_lower.int8.onnx", "text_upper.fp16.onnx"):
        (tmp_path / name).write_bytes(b"")
    found = scan_graphs_dir(tmp_path)
    assert {g: sorted(p) for g, p in found.items()} == {"video_lower": ["fp32", "int8"], "text_upper": ["fp16"]}
    assert found["video_lower"]["fp32"].name == "video_lower.onnx"
    (tmp_path / "encoder.onnx").write_bytes(b"")
    with pytest.raises(PackageError, match="encoder.onnx.*<graph>.onnx for fp32"):
        scan_graphs_dir(tmp_path)

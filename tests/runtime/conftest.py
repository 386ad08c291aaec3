"""Fixtures for the runtime tests: real packages of the tiny test preset (exported once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime._package import build_test_package, export_dual_qa_head, export_qa_graph, export_test_graphs

QA_ANSWERS = ["the red box", "the blue cup", "the red bowl", "a knife"]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    """(folder with graphs/ and tokenizer.json, PyTorch model, tokenizer); skipped without the export stack."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    root = tmp_path_factory.mktemp("exported")
    model, tok = export_test_graphs(root)
    return root, model, tok


@pytest.fixture(scope="session")
def package(exported: tuple[Path, object, object]) -> Path:
    """A package with the default 2 s clips every 1 s."""
    return build_test_package(exported[0], exported[0] / "package" / "tiny")


@pytest.fixture(scope="session")
def qa_package(exported: tuple[Path, object, object]) -> tuple[Path, object]:
    """(package with a QA head over :data:`QA_ANSWERS` and the default clips, the PyTorch head); its video graphs
    are those of ``package``, so it opens the indexes ``package`` wrote."""
    head = export_qa_graph(exported[0], exported[1], QA_ANSWERS)
    return build_test_package(exported[0], exported[0] / "package" / "tiny_qa", qa=True), head


@pytest.fixture(scope="session")
def dual_package(exported: tuple[Path, object, object], qa_package: tuple[Path, object]) -> tuple[Path, object]:
    """(``qa_package`` plus a gates-off QA head over the same answers, that PyTorch head)."""
    head = export_dual_qa_head(exported[0], exported[1], QA_ANSWERS)
    out = exported[0] / "package" / "tiny_dual"
    return build_test_package(exported[0], out, qa=True, dual=True), head


@pytest.fixture(scope="session")
def fast_package(exported: tuple[Path, object, object]) -> Path:
    """A package with 0.2 s clips every 0.1 s, so a live fake camera yields ten clips a second."""
    return build_test_package(exported[0], exported[0] / "package" / "tiny_fast", clip_seconds=0.2, stride_seconds=0.1)


@pytest.fixture(scope="session")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 s, 10 fps, 64x48 mp4 whose frames change over time (a square sweeping across)."""
    import cv2
    import numpy as np

    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for i in range(60):
        frame = np.full((48, 64, 3), 40 + 3 * i, np.uint8)  # (H, W, 3) BGR
        frame[10:30, i % 50 : i % 50 + 14] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    return path

"""The runtime (index, sources, SDK stream + search + ask) works in an install without torch (Jetson ``[runtime]``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked: the runtime must not need torch")
            return None

    sys.meta_path.insert(0, BlockTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")

    import numpy as np
    from egovlpv2_edge.runtime.index import ClipIndex
    from egovlpv2_edge.runtime.sources import CaptureThread, FrameRing, ReconnectPolicy, open_source
    from egovlpv2_edge.runtime.testing import FakeCameraFactory

    with ClipIndex.open(sys.argv[1], 8) as ix:
        ids = ix.add(np.eye(8)[:3], [0, 1, 2], [1, 2, 3], "cam", tokens=np.zeros((3, 2, 2), np.float16))
        assert [h.id for h in ix.search(np.eye(8)[1], k=1)[0]] == [ids[1]]
    ring = FrameRing(4)
    source = open_source(0, capture_factory=FakeCameraFactory(3), reconnect=ReconnectPolicy(max_attempts=0))
    thread = CaptureThread(source, ring)  # the camera drops after 3 frames and may not reconnect
    thread.start()
    thread.join(5)
    assert thread.stats().frames_in == 3 and len(ring.drain()) == 3
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print("OK")
    """
)


def test_index_and_sources_work_without_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "ix")],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr


_SDK_SCRIPT = textwrap.dedent(
    """
    import sys, time

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked: the runtime must not need torch")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import egovlpv2_edge
    from egovlpv2_edge.runtime.testing import FakeCameraFactory

    camera = FakeCameraFactory(pace=True, fps=50.0)
    with egovlpv2_edge.open(sys.argv[1], 0, sys.argv[2], capture_factory=camera) as rt:
        rt.start()
        deadline = time.monotonic() + 60
        while rt.stats().index.count < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        moments = rt.search("#C C opens the red box", k=2)
        answer = rt.ask("what did C open?", ["the red box", "the blue cup"])
    assert len(moments) == 2 and answer.answer in ("the red box", "the blue cup") and answer.evidence
    with egovlpv2_edge.open(sys.argv[3], index=sys.argv[2]) as rt:  # a QA head answers without choices
        free = rt.ask("what did C open?")
    assert free.answer in rt.package.answer_vocab("qa") and 0 < free.confidence <= 1 and free.evidence
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print("OK")
    """
)


def test_sdk_streams_searches_and_answers_without_torch(
    fast_package: Path, qa_package: tuple[Path, object], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SDK_SCRIPT, str(fast_package), str(tmp_path / "ix"), str(qa_package[0])],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr[-3000:]

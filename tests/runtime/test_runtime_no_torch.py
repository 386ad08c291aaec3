"""The runtime index and sources import and work in an install without torch (a Jetson ``[runtime]`` install)."""

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

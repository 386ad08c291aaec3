"""Child process for the pipeline crash test: streams a fake camera through the SDK until it is SIGKILLed.

Usage: ``python _pipeline_crash_child.py PACKAGE INDEX [FUNC:N:WHEN[:MATCH]]`` (the kill point syntax of
``_index_crash_child.py``). Prints ``C <id>`` for each clip once it is committed (the ``on_clip`` callback).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    import egovlpv2_edge
    from egovlpv2_edge.runtime.testing import FakeCameraFactory

    camera = FakeCameraFactory(pace=True, fps=100.0)
    rt = egovlpv2_edge.open(
        argv[0], 0, argv[1], capture_factory=camera, batch_size=2, max_token_clips=8,
        on_clip=lambda clip: print(f"C {clip.id}", flush=True),
    )  # fmt: skip
    if len(argv) > 2:
        spec = importlib.util.spec_from_file_location(
            "_index_crash_child", Path(__file__).with_name("_index_crash_child.py")
        )
        child = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(child)
        child._install_kill_point(argv[2])
    rt.start()
    while True:
        time.sleep(1.0)


if __name__ == "__main__":
    main(sys.argv[1:])

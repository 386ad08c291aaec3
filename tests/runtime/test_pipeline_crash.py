"""A process streaming through the pipeline and killed with SIGKILL reopens with every committed clip searchable.

Each round starts ``_pipeline_crash_child.py`` (fake camera -> pipeline -> index) on the same index, kills it at a
random moment or at a chosen point inside an index write, then reopens the index through the SDK and checks it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import egovlpv2_edge

_CHILD = Path(__file__).with_name("_pipeline_crash_child.py")
ROUNDS = [None, "pwrite:3:after", None, "replace:4:before:npy", "fsync:9:before"]


def _stream_and_kill(package: Path, index: Path, kill_point: str | None, rng: random.Random) -> list[int]:
    cmd = [sys.executable, str(_CHILD), str(package), str(index)] + ([kill_point] if kill_point else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    committed: list[int] = []
    reader = threading.Thread(target=lambda: committed.extend(int(line.split()[1]) for line in proc.stdout))
    reader.start()
    deadline = time.monotonic() + 120
    if kill_point is None:
        while len(committed) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
    proc.wait(max(1.0, deadline - time.monotonic()))
    reader.join(10)
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"child ended with {proc.returncode}: {stderr[-2000:]}"
    return committed


def test_sigkill_mid_stream_keeps_every_committed_clip(fast_package: Path, tmp_path: Path) -> None:
    index = tmp_path / "ix"
    rng = random.Random(0)
    expected: set[int] = set()
    for kill_point in ROUNDS:
        committed = _stream_and_kill(fast_package, index, kill_point, rng)
        assert committed, f"no clip committed before the kill ({kill_point})"
        assert min(committed) > max(expected, default=-1)  # a reopened index resumes its ids
        expected.update(committed)
        with egovlpv2_edge.open(fast_package, index=index) as rt:
            stored = {m.id for m in rt.search("#C C opens the red box", k=len(rt.index) + 10)}
            assert expected <= stored, f"lost committed clips {sorted(expected - stored)} ({kill_point})"
            assert len(stored) == rt.stats().index.count
            assert rt.ask("what did C open?", ["the red box", "the blue cup"]).evidence
            tokens = {int(p.stem) for p in (index / "tokens").iterdir()}
            assert tokens <= stored and len(tokens) <= 8
        expected = stored  # clips committed after the last printed line (kill before the print) count too
    assert not list(index.rglob("*.tmp"))

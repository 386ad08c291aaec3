"""Child process for the crash test: streams adds (and retention) into a ClipIndex until it is SIGKILLed.

Usage: ``python _index_crash_child.py INDEX_DIR SEED [FUNC:N:WHEN[:MATCH]]``. With the third argument the child
kills itself with SIGKILL right before (``WHEN=before``) or after (``after``) its N-th call of ``os.FUNC``
(fsync, replace, pwrite or unlink) whose arguments mention MATCH, i.e. at a chosen point inside a write or a
compaction; without it the parent kills it at a random moment.

Protocol on stdout, one line per event, flushed right after the event committed:
``READY``; ``A <id> <key> <has_tokens>`` after an add committed; ``R`` before a retention starts;
``D <id> ...`` after it finished, listing the ids it deleted.
Clip content is a pure function of its key (see ``clip_content``), so the parent can verify every clip.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

DIM = 64
MAX_TOKEN_CLIPS = 4
MAX_BYTES = 6000  # retention budget: keeps a few dozen clips so compaction runs often


def clip_content(key: int) -> tuple[np.ndarray, bytes, np.ndarray]:
    """Embedding (DIM,), thumbnail bytes and tokens (8, 16) of the clip with this key."""
    rng = np.random.default_rng(key)
    return rng.normal(size=DIM), key.to_bytes(8, "little"), rng.normal(size=(8, 16)).astype(np.float16)


def _install_kill_point(spec: str) -> None:
    func, n, when, *match = spec.split(":")
    original = getattr(os, func)
    calls = [0]

    def wrapper(*args: object, **kwargs: object) -> object:
        hit = False
        if not match or match[0] in " ".join(map(str, args)):
            calls[0] += 1
            hit = calls[0] == int(n)
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(os, func, wrapper)


def main(argv: list[str]) -> None:
    from egovlpv2_edge.runtime.index import ClipIndex

    path, seed = argv[0], int(argv[1])
    rng = np.random.default_rng(seed)
    ix = ClipIndex.open(path, DIM, max_token_clips=MAX_TOKEN_CLIPS)
    alive = set()
    if len(ix):
        alive = {h.id for h in ix.search(np.ones(DIM), k=len(ix))[0]}
    if len(argv) > 2:
        _install_kill_point(argv[2])
    print("READY", flush=True)
    step = 0
    while True:
        step += 1
        count = int(rng.integers(1, 4))
        keys = [int(k) for k in rng.integers(0, 2**62, size=count)]
        content = [clip_content(k) for k in keys]
        with_tokens = bool(rng.integers(0, 2))
        ids = ix.add(
            np.stack([c[0] for c in content]),
            [float(step)] * count,
            [step + 1.0] * count,
            f"cam{step % 2}",
            thumbnail=[c[1] for c in content],
            extra=[{"key": k} for k in keys],
            tokens=[c[2] for c in content] if with_tokens else None,
        )
        print("\n".join(f"A {i} {k} {int(with_tokens)}" for i, k in zip(ids, keys, strict=True)), flush=True)
        alive.update(ids)
        if step % 5 == 0:
            print("R", flush=True)
            ix.apply_retention(max_bytes=MAX_BYTES)
            gone = sorted(i for i in alive if i not in ix)
            alive.difference_update(gone)
            print("D " + " ".join(map(str, gone)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

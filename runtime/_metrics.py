"""Runtime measurements: per-stage latency percentiles over a sliding window, event rates, process memory."""

from __future__ import annotations

import collections
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

WINDOW = 1024  # latency samples kept per stage: percentiles describe recent behaviour, memory stays fixed


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one stage over its last :data:`WINDOW` samples, in milliseconds."""

    count: int  # samples ever recorded
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float  # over the window


class LatencyRecorder:
    """Thread-safe per-stage latency samples (a bounded deque per stage)."""

    def __init__(self) -> None:
        self._samples: dict[str, collections.deque[float]] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, stage: str, seconds: float) -> None:
        """Add one sample of ``stage``."""
        with self._lock:
            self._samples.setdefault(stage, collections.deque(maxlen=WINDOW)).append(seconds)
            self._counts[stage] = self._counts.get(stage, 0) + 1

    def summary(self) -> dict[str, LatencyStats]:
        """Percentiles per stage that has samples."""
        with self._lock:
            samples = {k: np.array(v) * 1e3 for k, v in self._samples.items()}
            counts = dict(self._counts)
        out = {}
        for stage, ms in samples.items():
            p50, p95, p99 = np.percentile(ms, [50, 95, 99])
            out[stage] = LatencyStats(counts[stage], float(p50), float(p95), float(p99), float(ms.max()))
        return out


class RateMeter:
    """Events per second over the last ``window`` events (thread-safe)."""

    def __init__(self, window: int = 64) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def tick(self) -> None:
        """Record one event now."""
        with self._lock:
            self._times.append(time.monotonic())

    def rate(self) -> float:
        """Events per second; 0 until two events, and 0 once the last event is older than the window spans."""
        with self._lock:
            times = list(self._times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        span = times[-1] - times[0]
        if time.monotonic() - times[-1] > max(span, 1.0):  # stream stopped: the rate is no longer current
            return 0.0
        return (len(times) - 1) / span


def rss_bytes() -> int:
    """Resident set size of this process (Linux: current; elsewhere: peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _ru_maxrss()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process. Linux: ``VmHWM``, the high-water mark of this process's own address
    space (``ru_maxrss`` of a child started by fork + exec also counts the parent's memory at the fork)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _ru_maxrss()


def _ru_maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024

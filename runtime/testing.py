"""Test doubles for camera hardware: a ``cv2.VideoCapture`` stand-in that drops and comes back.

Only the hardware is faked. Pass :class:`FakeCameraFactory` as ``capture_factory`` to
``egovlpv2_edge.runtime.sources.open_source``; everything above the capture (timestamps, reconnect backoff,
``CaptureThread``, ``FrameRing``) runs the real code. Nothing here is used outside tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import cv2
import numpy as np


class FakeCapture:
    """Synthetic BGR camera: ``frames`` good reads, then reads fail as if the cable or network dropped.

    Frame ``i`` (counted across all captures of one factory) is filled with ``i % 256`` and carries ``i`` as
    a 24-bit number in pixel (0, 0) (B, G, R = low, mid, high byte), so tests can check frames keep flowing.
    """

    def __init__(
        self,
        counter: list[int],
        *,
        frames: int | None,
        opened: bool = True,
        size: tuple[int, int] = (48, 64),
        fps: float = 30.0,
        pace: bool = False,
    ) -> None:
        """Create the capture.

        Args:
            counter: One-element list shared by a factory's captures: the next global frame number.
            frames: Good reads before failing; None never fails.
            opened: What ``isOpened`` reports (False simulates a camera that is still absent).
            size: Frame (height, width).
            fps: Reported ``CAP_PROP_FPS``; with ``pace`` reads also take 1/fps seconds.
            pace: Sleep 1/fps per read like a real sensor.
        """
        self._counter = counter
        self._left = frames
        self._opened = opened
        self._size = size
        self._fps = fps
        self._pace = pace
        self._read_count = 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        """Whether the fake device is open."""
        return self._opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        """Return ``(True, frame)`` while frames are left, then ``(False, None)``."""
        if not self._opened or self._left == 0:
            return False, None
        if self._pace:
            time.sleep(1.0 / self._fps)
        if self._left is not None:
            self._left -= 1
        i = self._counter[0]
        self._counter[0] += 1
        self._read_count += 1
        H, W = self._size
        image = np.full((H, W, 3), i % 256, np.uint8)  # (H, W, 3) BGR
        image[0, 0] = (i & 0xFF, (i >> 8) & 0xFF, (i >> 16) & 0xFF)
        return True, image

    def get(self, prop_id: int) -> float:
        """``CAP_PROP_FPS`` and ``CAP_PROP_POS_MSEC`` like a device; 0 for anything else."""
        if prop_id == cv2.CAP_PROP_FPS:
            return self._fps
        if prop_id == cv2.CAP_PROP_POS_MSEC:
            return 1000.0 * self._read_count / self._fps
        return 0.0

    def release(self) -> None:
        """Close the fake device."""
        self._opened = False


def frame_number(rgb: np.ndarray) -> int:
    """Read back the global frame number a :class:`FakeCapture` wrote into an RGB frame."""
    r, g, b = (int(v) for v in rgb[0, 0])
    return b | (g << 8) | (r << 16)


class FakeCameraFactory:
    """``capture_factory`` for ``open_source`` that simulates a camera which drops and reconnects.

    Connection ``c`` (0-based, counting successful opens) yields ``frames_per_connection[c]`` frames, then
    fails reads; the last entry repeats. Before each reconnect, the first ``failed_reopens`` open attempts
    return a capture that is not opened (the device is still away). Every call is recorded in ``calls``.
    """

    def __init__(
        self,
        frames_per_connection: int | None | Sequence[int | None] = None,
        *,
        failed_reopens: int = 0,
        size: tuple[int, int] = (48, 64),
        fps: float = 30.0,
        pace: bool = False,
    ) -> None:
        """Describe the simulated camera.

        Args:
            frames_per_connection: Frames per connection (None: never drops); a sequence gives one per
                connection, its last entry repeating.
            failed_reopens: Failed open attempts before every reconnect succeeds.
            size: Frame (height, width).
            fps: Reported frame rate.
            pace: Deliver frames at ``fps`` like a real sensor.
        """
        if frames_per_connection is None or isinstance(frames_per_connection, int):
            frames_per_connection = [frames_per_connection]
        self.frames_per_connection = list(frames_per_connection)
        self.failed_reopens = failed_reopens
        self.size = size
        self.fps = fps
        self.pace = pace
        self.calls: list[tuple[str | int, int]] = []  # (target, api_preference) of every open
        self.connections = 0  # successful opens
        self._failed_in_a_row = 0
        self._counter = [0]
        self._lock = threading.Lock()

    def __call__(self, target: str | int, api_preference: int) -> FakeCapture:
        """Open the fake camera (what ``cv2.VideoCapture(target, api_preference)`` would do)."""
        with self._lock:
            self.calls.append((target, api_preference))
            if self.connections > 0 and self._failed_in_a_row < self.failed_reopens:
                self._failed_in_a_row += 1
                return FakeCapture(self._counter, frames=0, opened=False, size=self.size, fps=self.fps)
            self._failed_in_a_row = 0
            frames = self.frames_per_connection[min(self.connections, len(self.frames_per_connection) - 1)]
            self.connections += 1
            return FakeCapture(self._counter, frames=frames, size=self.size, fps=self.fps, pace=self.pace)

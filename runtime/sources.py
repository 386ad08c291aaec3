"""Video sources for the streaming runtime: files, cameras, RTSP/HTTP streams and GStreamer pipelines via OpenCV.

``open_source(spec)`` picks the OpenCV backend from the spec:

* a device index (``0`` or ``"0"``) or a V4L2 node (``"/dev/video0"``): a USB/UVC camera;
* a URL (``rtsp://``, ``http(s)://``, ``udp://`` ...): a network stream, opened with open/read timeouts;
* a string containing ``"!"``: a GStreamer pipeline, opened with ``cv2.CAP_GSTREAMER``;
* anything else: a video file.

On Jetson, a MIPI-CSI camera (IMX219, IMX477, ...) is read through the Argus daemon with a GStreamer pipeline
that ends in a BGR ``appsink``; ``drop=1 max-buffers=2`` keeps the sink from queueing stale frames when the
consumer is slower than the sensor. OpenCV must be built with GStreamer (JetPack's OpenCV is; the pip wheels
are not)::

    open_source(
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=2"
    )  # the same string as jetson_csi_pipeline(sensor_id=0)

Timestamps (``Frame.ts``, seconds): files use the decoder position (``CAP_PROP_POS_MSEC``), so clips map back
to the file. Live sources use the capture clock, ``time.monotonic()`` relative to the first frame, because the
backends disagree on what their own timestamps mean (V4L2 gives time since boot, GStreamer the pipeline running
time, FFmpeg the stream PTS, which restarts on reconnect); the capture clock stays monotonic across reconnects.

Files end: iteration stops and ``VideoSource.ended`` is set. Live sources reconnect with exponential backoff
(``ReconnectPolicy``) when a read fails. ``CaptureThread`` moves frames into a ``FrameRing`` that never blocks
the producer and drops the oldest frame when full, the ringbuffer / drop-inputs back-pressure of NanoLLM's
``VideoSource`` and plugins (dusty-nv/NanoLLM), so the encoder always works on recent footage.

Without a camera, pass ``capture_factory`` (see ``egovlpv2_edge.runtime.testing.FakeCameraFactory``); the
default factory is ``cv2.VideoCapture``.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

import cv2
import numpy as np

logger = logging.getLogger(__name__)

SourceKind = Literal["device", "file", "stream", "gstreamer"]
T = TypeVar("T")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_CREDENTIALS_RE = re.compile(r"(://)[^/@\s]+@")
_STREAM_OPEN_TIMEOUT_MS = 10_000  # FFmpeg backend: give up opening a dead URL after this long
_STREAM_READ_TIMEOUT_MS = 5_000  # FFmpeg backend: a stalled stream fails the read (-> reconnect) after this


class SourceError(RuntimeError):
    """A video source failed."""


class SourceOpenError(SourceError):
    """A video source could not be opened or decoded."""


class SourceDisconnectedError(SourceError):
    """A live source stayed disconnected after the allowed reconnect attempts."""


class CaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` a source uses (what a capture factory must return)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop_id: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[str | int, int], CaptureLike]  # (target, api_preference) -> capture


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    ts: float  # seconds: file position for files, capture clock since the first frame for live sources
    index: int  # 0-based count of frames this source delivered
    arrived: float = field(default_factory=time.monotonic)  # time.monotonic() when decoded (for latencies)


@dataclass(frozen=True)
class SourceSpec:
    """How a spec string is opened."""

    kind: SourceKind
    target: str | int  # what cv2.VideoCapture receives
    api_preference: int  # cv2.CAP_* backend


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff for live sources: wait initial_s, initial_s*factor, ... capped at max_s."""

    initial_s: float = 0.5  # wait before the first reconnect attempt
    max_s: float = 10.0  # longest wait between attempts
    factor: float = 2.0  # wait growth per failed attempt
    max_attempts: int | None = None  # consecutive attempts before giving up; None retries forever

    def __post_init__(self) -> None:
        if not (self.initial_s >= 0 and self.max_s >= self.initial_s and self.factor >= 1):
            raise ValueError(
                f"need 0 <= initial_s <= max_s and factor >= 1, got initial_s={self.initial_s}, "
                f"max_s={self.max_s}, factor={self.factor}"
            )
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 or None, got {self.max_attempts}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (1-based)."""
        return min(self.initial_s * self.factor ** (attempt - 1), self.max_s)


def parse_spec(spec: str | int | Path) -> SourceSpec:
    """Classify a source spec (see the module docstring).

    Args:
        spec: Device index, V4L2 node, URL, GStreamer pipeline or file path.

    Returns:
        The kind, the OpenCV target and the backend to open it with.
    """
    if isinstance(spec, bool) or not isinstance(spec, (str, int, Path)):
        raise TypeError(f"source spec must be a str, int or Path, got {type(spec).__name__}: {spec!r}")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"device index must be >= 0, got {spec}")
        return SourceSpec("device", spec, cv2.CAP_ANY)
    text = str(spec).strip()
    if not text:
        raise ValueError("source spec is empty; pass a device index, file path, URL or GStreamer pipeline")
    if "!" in text:
        return SourceSpec("gstreamer", text, cv2.CAP_GSTREAMER)
    if text.isdigit():
        return SourceSpec("device", int(text), cv2.CAP_ANY)
    if text.startswith("/dev/video"):
        return SourceSpec("device", text, cv2.CAP_V4L2)
    if _URL_RE.match(text) and not text.lower().startswith("file://"):
        return SourceSpec("stream", text, cv2.CAP_ANY)
    return SourceSpec("file", text.removeprefix("file://"), cv2.CAP_ANY)


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: int = 30) -> str:
    """GStreamer pipeline for a Jetson MIPI-CSI camera through Argus (see the module docstring).

    Args:
        sensor_id: CSI port of the camera.
        width: Capture width in pixels (a mode the sensor supports).
        height: Capture height in pixels.
        fps: Capture frame rate.

    Returns:
        A spec for :func:`open_source`.
    """
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=2"
    )


def opencv_capture(target: str | int, api_preference: int) -> CaptureLike:
    """Default capture factory: ``cv2.VideoCapture``, with open/read timeouts for network streams."""
    if isinstance(target, str) and _URL_RE.match(target):
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _STREAM_OPEN_TIMEOUT_MS]
        params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, _STREAM_READ_TIMEOUT_MS]
        return cv2.VideoCapture(target, api_preference, params)
    return cv2.VideoCapture(target, api_preference)


def open_source(
    spec: str | int | Path,
    *,
    realtime: bool | None = None,
    reconnect: ReconnectPolicy | None = None,
    capture_factory: CaptureFactory | None = None,
) -> VideoSource:
    """Open a video source.

    Args:
        spec: Device index (``0``, ``"0"``, ``"/dev/video0"``), file path, URL or GStreamer pipeline.
        realtime: Files only: pace frames at the file's frame rate (True) or decode as fast as possible
            (False, also the default). Live sources always deliver at the device's rate.
        reconnect: Backoff for live sources after a failed read; default ``ReconnectPolicy()``.
        capture_factory: ``(target, api_preference) -> capture``; default ``cv2.VideoCapture``. Tests pass a
            fake camera here.

    Returns:
        The open source; iterate it or call ``read()``, then ``close()`` (or use ``with``).

    Raises:
        FileNotFoundError: A file spec names no existing file.
        SourceOpenError: OpenCV could not open the source or decode its first frame.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "file" and not Path(parsed.target).is_file():
        raise FileNotFoundError(f"video file '{parsed.target}' does not exist")
    return VideoSource(
        parsed,
        realtime=bool(realtime) and parsed.kind == "file",
        reconnect=reconnect or ReconnectPolicy(),
        capture_factory=capture_factory or opencv_capture,
    )


class VideoSource:
    """Frames from one source as RGB ``Frame``s; create with :func:`open_source`.

    ``read``/iteration and ``close`` belong to one thread (OpenCV captures are not thread-safe);
    ``interrupt`` may be called from any thread to make a blocked backoff or pacing wait return.
    """

    def __init__(
        self, spec: SourceSpec, *, realtime: bool, reconnect: ReconnectPolicy, capture_factory: CaptureFactory
    ) -> None:
        """Open ``spec``; see :func:`open_source` for the arguments."""
        self.spec = spec
        self.live = spec.kind != "file"
        self.realtime = realtime
        self.reconnect_policy = reconnect
        self.ended = False  # a file reached its end, or the source was closed
        self.reconnects = 0  # successful re-opens after a drop
        self.frames_read = 0
        self._factory = capture_factory
        self._interrupted = threading.Event()
        self._failures = 0  # reconnect attempts since the last good frame
        self._clock0: float | None = None  # capture clock at the first live frame
        self._pace0: tuple[float, float] | None = None  # (monotonic, ts) anchor of realtime pacing
        self._last_ts = -math.inf
        self._pending: np.ndarray | None = None
        self._cap: CaptureLike | None = self._try_open()
        if self._cap is None:
            raise SourceOpenError(self._open_error())
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0  # nominal rate; 0 when unknown
        if not self.live:  # decode one frame now: a file OpenCV opens but cannot decode fails here, clearly
            ok, image = self._cap.read()
            if not ok or image is None:
                self.close()
                raise SourceOpenError(self._open_error())
            self._pending = image

    @property
    def name(self) -> str:
        """The spec with any URL password hidden, for logs."""
        return _CREDENTIALS_RE.sub(r"\1***@", str(self.spec.target))

    def read(self) -> Frame | None:
        """Return the next frame, or None once a file ended or the source was closed/interrupted.

        Raises:
            SourceDisconnectedError: A live source could not reconnect within ``max_attempts``.
        """
        if self.ended or self._interrupted.is_set():
            return None
        got = self._read_file() if not self.live else self._read_live()
        if got is None:
            self.ended = not self.live or self.ended
            return None
        image, ts = got
        frame = Frame(_to_rgb(image), ts, self.frames_read)
        self.frames_read += 1
        if self.realtime:
            self._pace(ts)
        return frame

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def _read_file(self) -> tuple[np.ndarray, float] | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = self._cap.read() if self._cap is not None else (False, None)
            if not ok or image is None:
                logger.info("%s ended after %d frames", self.name, self.frames_read)
                return None
        ts = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if not math.isfinite(ts) or ts <= self._last_ts:  # backend without positions: step by the frame rate
            ts = self._last_ts + 1.0 / (self.fps or 30.0) if self.frames_read else 0.0
        self._last_ts = ts
        return image, ts

    def _read_live(self) -> tuple[np.ndarray, float] | None:
        while not self._interrupted.is_set():
            ok, image = self._cap.read() if self._cap is not None else (False, None)
            if ok and image is not None:
                now = time.monotonic()
                self._clock0 = now if self._clock0 is None else self._clock0
                self._failures = 0
                return image, now - self._clock0
            if not self._reconnect():
                return None
        return None

    def _reconnect(self) -> bool:
        """Reopen after a failed read with backoff; False if interrupted, raises after max_attempts."""
        policy = self.reconnect_policy
        if self._cap is not None:
            logger.warning("%s: read failed after %d frames; reconnecting", self.name, self.frames_read)
            self._release()
        while policy.max_attempts is None or self._failures < policy.max_attempts:
            self._failures += 1
            delay = policy.delay(self._failures)
            logger.warning("%s: reconnect attempt %d in %.2f s", self.name, self._failures, delay)
            if self._interrupted.wait(delay):
                return False
            self._cap = self._try_open()
            if self._cap is not None:
                self.reconnects += 1
                logger.info("%s: reconnected (reconnect %d)", self.name, self.reconnects)
                return True
        raise SourceDisconnectedError(
            f"{self.name}: still disconnected after {self._failures} reconnect attempts; check the cable, "
            "network or camera, or allow more attempts with ReconnectPolicy(max_attempts=...)"
        )

    def _try_open(self) -> CaptureLike | None:
        try:
            cap = self._factory(self.spec.target, self.spec.api_preference)
        except cv2.error as e:
            logger.warning("%s: OpenCV raised while opening: %s", self.name, e)
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def _open_error(self) -> str:
        if self.spec.kind == "file":
            return (
                f"OpenCV could not open or decode video file '{self.spec.target}'. Check that it is a video and "
                "that this OpenCV build has a backend and codec for it (cv2.getBuildInformation() should list "
                "FFMPEG or GStreamer); re-encoding with `ffmpeg -i in.mp4 -c:v libx264 out.mp4` often helps"
            )
        hint = {
            "gstreamer": "check the pipeline with gst-launch-1.0 and that OpenCV was built with GStreamer",
            "device": "check that the camera is connected and not used by another process (v4l2-ctl --list-devices)",
            "stream": "check the URL, credentials and network, and that OpenCV was built with FFMPEG or GStreamer",
        }[self.spec.kind]
        return f"OpenCV could not open {self.spec.kind} source '{self.name}': {hint}"

    def _pace(self, ts: float) -> None:
        """Sleep until ``ts`` is due on the wall clock relative to the first paced frame."""
        now = time.monotonic()
        if self._pace0 is None:
            self._pace0 = (now, ts)
            return
        wait = self._pace0[0] + (ts - self._pace0[1]) - now
        if wait > 0:
            self._interrupted.wait(wait)
        elif wait < -0.5:  # fell behind (slow consumer): re-anchor instead of bursting to catch up
            self._pace0 = (now, ts)

    def interrupt(self) -> None:
        """Make ``read`` return None from now on and cut short any backoff or pacing wait (any thread)."""
        self._interrupted.set()

    def close(self) -> None:
        """Release the capture (idempotent); ``read`` returns None afterwards."""
        self._interrupted.set()
        self.ended = True
        self._release()

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self.spec.kind}: '{self.name}', frames_read={self.frames_read})"


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """BGR/BGRA/gray uint8 from OpenCV -> (H, W, 3) uint8 RGB."""
    if image.dtype != np.uint8:
        raise SourceError(f"source delivered {image.dtype} frames; only uint8 is supported (set the format to BGR)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise SourceError(f"source delivered frames of shape {image.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")


class DropOldestRing(Generic[T]):
    """Bounded FIFO whose ``put`` never blocks: when full, the oldest item is dropped and counted.

    Memory is bounded by ``capacity`` items. Safe for one or more producers and consumers. The runtime uses
    one for frames (:class:`FrameRing`) and one for sampled clips waiting for the encoder. With ``lossless``
    ``put`` waits for room instead (for a file read as fast as possible, where nothing needs dropping).
    """

    def __init__(self, capacity: int, *, lossless: bool = False) -> None:
        """Create an empty ring.

        Args:
            capacity: Most items held at once (>= 1).
            lossless: ``put`` waits for room (or ``close``) instead of dropping the oldest item.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.lossless = lossless
        self.pushed = 0  # items offered by put
        self.dropped = 0  # items discarded: evicted when full, or put after close
        self.peak = 0  # most items held at once so far
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T) -> bool:
        """Add an item without blocking (lossless: once there is room).

        Returns:
            True if an item was discarded (the oldest one, or this one if the ring is closed).
        """
        with self._cond:
            self.pushed += 1
            if self.lossless:
                self._cond.wait_for(lambda: len(self._items) < self.capacity or self._closed)
            if self._closed:
                self.dropped += 1
                return True
            evicted = len(self._items) >= self.capacity
            if evicted:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.peak = max(self.peak, len(self._items))
            self._cond.notify()
            return evicted

    def get(self, timeout: float | None = None) -> T | None:
        """Remove and return the oldest item, waiting up to ``timeout`` seconds (None waits forever).

        Returns:
            The item, or None on timeout or once the ring is closed and empty.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            item = self._items.popleft() if self._items else None
            self._cond.notify_all()  # a lossless producer may wait for room
            return item

    def get_batch(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Wait like :meth:`get` for one item, then also take up to ``max_items - 1`` more that are waiting.

        Returns:
            Oldest first; empty on timeout or once the ring is closed and empty.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return []
            items = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            self._cond.notify_all()
            return items

    def drain(self) -> list[T]:
        """Remove and return every buffered item, oldest first, without waiting."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def close(self) -> None:
        """Wake all consumers; ``get`` returns None once the remaining items are taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class FrameRing(DropOldestRing[Frame]):
    """The capture ring: a :class:`DropOldestRing` of frames, so the newest footage always gets in."""


@dataclass(frozen=True)
class CaptureStats:
    """Counters of a :class:`CaptureThread`."""

    frames_in: int  # frames read from the source
    dropped: int  # frames the ring discarded
    reconnects: int  # successful reconnects of the source
    fps: float  # measured over the last ``CaptureThread.FPS_WINDOW`` frames; 0 until two frames arrived
    running: bool
    error: str | None  # why the thread stopped early, if it did


class CaptureThread(threading.Thread):
    """Daemon thread that reads a source into a :class:`FrameRing` until the source ends or ``stop()``.

    The thread owns the source: it closes it on exit, and closes the ring too (so consumers see the end)
    unless ``close_ring=False``. A source that cannot reconnect ends the thread with ``stats().error`` set.
    """

    FPS_WINDOW = 30

    def __init__(
        self, source: VideoSource, ring: FrameRing, *, close_ring: bool = True, name: str | None = None
    ) -> None:
        """Prepare the thread; call ``start()``.

        Args:
            source: Open source; the thread closes it when it ends.
            ring: Destination ring.
            close_ring: Close the ring when the thread ends.
            name: Thread name (default from the source).
        """
        super().__init__(name=name or f"capture:{source.name}"[:60], daemon=True)
        self.source = source
        self.ring = ring
        self.close_ring = close_ring
        self.frames_in = 0
        self.error: BaseException | None = None
        self._arrivals: collections.deque[float] = collections.deque(maxlen=self.FPS_WINDOW)
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Read frames into the ring (the thread body)."""
        try:
            while not self._stop_event.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                self.frames_in += 1
                self._arrivals.append(time.monotonic())
                self.ring.put(frame)
        except Exception as e:  # noqa: BLE001 - reported through stats(); the thread must not die silently
            self.error = e
            logger.error("capture from %s stopped: %s", self.source.name, e)
        finally:
            self.source.close()
            if self.close_ring:
                self.ring.close()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the thread to finish and wait up to ``timeout`` seconds (a read blocked in OpenCV finishes first)."""
        self._stop_event.set()
        self.source.interrupt()
        if self.is_alive():
            self.join(timeout)

    def stats(self) -> CaptureStats:
        """Current counters."""
        arrivals = list(self._arrivals)
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        return CaptureStats(
            frames_in=self.frames_in,
            dropped=self.ring.dropped,
            reconnects=self.source.reconnects,
            fps=(len(arrivals) - 1) / span if span > 0 else 0.0,
            running=self.is_alive(),
            error=None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        )

"""The streaming pipeline: capture -> frame ring -> clip sampler -> clip ring -> batched encoder -> clip index.

Three threads, joined by two bounded rings whose ``put`` never blocks (``sources.DropOldestRing``)::

    CaptureThread --FrameRing--> sampler thread --clip ring--> encoder thread --> ClipIndex (+ on_clip)

* capture reads the source at its own rate; when the sampler falls behind, the ring drops the oldest frame;
* the sampler slides the package's clip window (``clip_seconds`` long, every ``stride_seconds``) over the frame
  timestamps, picks for each of a clip's ``frames_per_clip`` bin midpoints (the evaluation sampling of
  training) the nearest frame, and preprocesses each picked frame once with ``egovlpv2_edge.preprocess`` (numpy
  and OpenCV, the same transform as evaluation); when the encoder falls behind, the clip ring drops the oldest
  clip;
* the encoder takes up to ``batch_size`` waiting clips, runs ``video_lower`` + ``video_upper`` (gates off) in one
  ONNX Runtime call each, and adds embeddings, the tokens entering the fused layers (float16) and a JPEG
  thumbnail to the index in one transaction; then it calls ``on_clip`` and, every ``Retention.every_s``,
  applies retention.

So capture never waits on the model, memory is bounded by the two ring capacities, and every dropped frame or
clip is counted. A file read as fast as possible is the exception: nothing is live, so both rings wait for room
instead of dropping (lossless), and the file is indexed whole at the speed of the slowest stage. A gap in the
timestamps longer than a clip (a reconnect) restarts the clip grid.

Clip times in the index: for files, the file position (seconds); for live sources, Unix time (the source's
capture clock plus the wall time of its first frame), so clips of successive sessions and of several cameras
line up and ``since=time.time() - 300`` means "the last five minutes".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from egovlpv2_edge.package import Preprocessing
from egovlpv2_edge.preprocess import eval_transform
from egovlpv2_edge.runtime._metrics import LatencyRecorder, RateMeter
from egovlpv2_edge.runtime.encoder import PackageEncoder
from egovlpv2_edge.runtime.index import ClipIndex
from egovlpv2_edge.runtime.sources import CaptureThread, DropOldestRing, Frame, FrameRing, VideoSource

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 160  # longest side of stored JPEG thumbnails, pixels
_POLL_S = 0.1  # how often idle worker threads look at the stop flag


@dataclass(frozen=True)
class SampledClip:
    """One clip ready for the encoder."""

    start: float  # window start, seconds on the source clock
    end: float  # window end
    frames: np.ndarray  # (F, 3, S, S) float32, preprocessed
    thumbnail: bytes | None  # JPEG of the middle sampled frame
    arrived: float  # time.monotonic() when the clip's last sampled frame was decoded


@dataclass(frozen=True)
class IndexedClip:
    """What ``on_clip`` receives once a clip is committed to the index (and searchable)."""

    id: int  # clip id in the index
    start: float  # seconds: file position, or Unix time for live sources
    end: float
    source: str
    latency_s: float  # from decoding the clip's last sampled frame to the index commit


@dataclass(frozen=True)
class Retention:
    """Retention the pipeline applies while streaming (see ``ClipIndex.apply_retention``)."""

    max_age_s: float | None = None  # delete clips indexed longer ago than this
    max_bytes: int | None = None  # then delete the oldest until vectors + tokens + thumbnails fit
    every_s: float = 10.0  # how often to check


@dataclass(frozen=True)
class PipelineStats:
    """Counters of a running (or finished) pipeline."""

    frames_in: int  # frames read from the source
    frames_dropped: int  # frames the frame ring discarded (sampler behind)
    fps_in: float  # capture rate over the last frames
    fps_out: float  # rate at which the sampler takes frames off the ring
    clips_sampled: int  # clips the sampler completed
    clips_dropped: int  # clips the clip ring discarded (encoder behind)
    clips_indexed: int  # clips committed to the index
    clips_per_s: float  # indexing rate over the last clips
    frame_ring: tuple[int, int, int]  # (now, peak, capacity) frames buffered
    clip_ring: tuple[int, int, int]  # (now, peak, capacity) clips buffered
    reconnects: int  # successful source reconnects
    gaps: int  # timestamp gaps longer than a clip (clip grid restarted)
    running: bool
    ended: bool  # the threads finished (source ended or stop()) and everything buffered was indexed
    error: str | None  # why the pipeline stopped early, if it did


class ClipSampler:
    """Turns timestamped frames into preprocessed clips on the package's sliding window (not thread-safe).

    Clip ``k`` covers ``[t0 + k * stride, t0 + k * stride + clip_seconds]`` where ``t0`` is the first frame's
    time; its frames are the ones nearest to the midpoints of ``frames_per_clip`` equal bins of the window.
    Only the previous frame is held besides the current one, and each picked frame is preprocessed once even
    when overlapping clips share it.
    """

    def __init__(self, pre: Preprocessing, thumbnails: bool = True) -> None:
        """Create a sampler for the package preprocessing ``pre``; ``thumbnails`` adds a JPEG per clip."""
        self.pre = pre
        self.thumbnails = thumbnails
        self.gaps = 0
        F, W = pre.frames_per_clip, pre.clip_seconds
        self._offsets = (np.arange(F) + 0.5) * (W / F)  # bin midpoints relative to the clip start
        self._prev: Frame | None = None
        self._t0: float | None = None
        self._k = 0  # next clip number on the grid
        self._open: list[_OpenClip] = []
        self._prepared: OrderedDict[int, np.ndarray] = OrderedDict()  # frame index -> (3, S, S)

    def push(self, frame: Frame) -> list[SampledClip]:
        """Feed the next frame (timestamps increasing); returns the clips it completed, oldest first."""
        pre = self.pre
        if self._prev is not None and frame.ts - self._prev.ts > pre.clip_seconds:
            log.info("timestamp gap %.2f s -> %.2f s: restarting the clip grid", self._prev.ts, frame.ts)
            self.gaps += 1
            self._prev, self._t0, self._open = None, None, []
        if self._t0 is None:
            self._t0, self._k = frame.ts, 0
        while (start := self._t0 + self._k * pre.stride_seconds) <= frame.ts:
            self._open.append(_OpenClip(start, start + self._offsets))
            self._k += 1
        done = []
        for clip in self._open:
            while len(clip.frames) < len(clip.targets) and clip.targets[len(clip.frames)] <= frame.ts:
                target = clip.targets[len(clip.frames)]
                prev = self._prev
                pick = prev if prev is not None and target - prev.ts < frame.ts - target else frame
                clip.frames.append(self._prepare(pick))
                if len(clip.frames) == len(clip.targets) // 2 + 1:
                    clip.middle = pick
            if len(clip.frames) == len(clip.targets):
                done.append(self._finish(clip, frame))
        self._open = [c for c in self._open if len(c.frames) < len(c.targets)]
        self._prev = frame
        return done

    def _prepare(self, frame: Frame) -> np.ndarray:
        hit = self._prepared.get(frame.index)
        if hit is None:
            pre = self.pre
            hit = eval_transform(frame.image[None], pre.img_size, pre.mean, pre.std)[0]  # (3, S, S)
            self._prepared[frame.index] = hit
            if len(self._prepared) > 2 * pre.frames_per_clip:
                self._prepared.popitem(last=False)
        return hit

    def _finish(self, clip: _OpenClip, last: Frame) -> SampledClip:
        thumb = _thumbnail(clip.middle.image) if self.thumbnails and clip.middle is not None else None
        return SampledClip(clip.start, clip.start + self.pre.clip_seconds, np.stack(clip.frames), thumb, last.arrived)


class _OpenClip:
    """A clip whose frames are still being picked."""

    def __init__(self, start: float, targets: np.ndarray) -> None:
        self.start = start
        self.targets = targets  # (F,) sample times
        self.frames: list[np.ndarray] = []
        self.middle: Frame | None = None


def _thumbnail(rgb: np.ndarray) -> bytes:
    H, W, _ = rgb.shape
    scale = THUMBNAIL_SIDE / max(H, W)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(W * scale)), max(1, round(H * scale))), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a thumbnail")
    return jpg.tobytes()


class StreamPipeline:
    """Capture, sample, encode and index one source (see the module docstring); start with :meth:`start`.

    Args:
        source: An open source; the pipeline closes it when it ends.
        encoder: Encoder of the package the index belongs to.
        index: Open index (dim = the package's embedding size); the pipeline is its only writer.
        source_name: Name stored with each clip.
        latency: Where stage latencies are recorded (``sample``, ``encode``, ``index``, ``end_to_end``).
        ring_frames: Frame ring capacity.
        clip_queue: Clip ring capacity.
        batch_size: Most clips per encoder call.
        thumbnails: Store a JPEG thumbnail with each clip.
        on_clip: Called in the encoder thread with each committed clip; exceptions are logged, not raised.
        retention: Retention applied while streaming, or None.
    """

    def __init__(
        self,
        source: VideoSource,
        encoder: PackageEncoder,
        index: ClipIndex,
        *,
        source_name: str,
        latency: LatencyRecorder,
        ring_frames: int = 64,
        clip_queue: int = 8,
        batch_size: int = 4,
        thumbnails: bool = True,
        on_clip: Callable[[IndexedClip], None] | None = None,
        retention: Retention | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.source = source
        self.encoder = encoder
        self.index = index
        self.source_name = source_name
        self.latency = latency
        self.batch_size = batch_size
        self.on_clip = on_clip
        self.retention = retention
        lossless = not source.live and not source.realtime
        self.frames = FrameRing(ring_frames, lossless=lossless)
        self.clips: DropOldestRing[SampledClip] = DropOldestRing(clip_queue, lossless=lossless)
        self.sampler = ClipSampler(encoder.package.preprocessing, thumbnails)
        self.capture = CaptureThread(source, self.frames)
        self._threads = [
            threading.Thread(target=self._guard, args=(self._sample_loop,), name="egovlp-sampler", daemon=True),
            threading.Thread(target=self._guard, args=(self._encode_loop,), name="egovlp-encoder", daemon=True),
        ]
        self._stop = threading.Event()
        self._out_rate, self._clip_rate = RateMeter(), RateMeter()
        self.clips_sampled = self.clips_indexed = 0
        self.error: BaseException | None = None
        self._started = False
        self._last_retention = time.monotonic()
        self.time_offset = 0.0  # added to source timestamps before indexing (Unix time for live sources)

    def start(self) -> None:
        """Start the three threads (once)."""
        if self._started:
            raise RuntimeError("the pipeline was already started; open a new runtime to stream again")
        self._started = True
        self.capture.start()
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop capture, index what is already buffered, and join the threads (up to ``timeout`` seconds)."""
        if not self._started:
            self.source.close()
            return
        self.capture.stop(timeout)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            log.warning("pipeline threads did not finish within %.1f s; abandoning buffered clips", timeout)
            self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the source ended and every buffered clip was indexed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in [self.capture, *self._threads]:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in [self.capture, *self._threads])

    def _guard(self, loop: Callable[[], None]) -> None:
        """Run a worker loop; on an exception record it and stop the whole pipeline."""
        try:
            loop()
        except Exception as e:  # noqa: BLE001 - reported through stats(); the pipeline must not die silently
            self.error = self.error or e
            log.exception("streaming pipeline stopped")
            self._stop.set()
            self.capture.stop(0)
            self.frames.close()
            self.clips.close()

    def _sample_loop(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.frames.get(timeout=_POLL_S)
                if frame is None:
                    if self.frames.closed and not len(self.frames):
                        return
                    continue
                if self.source.live and frame.index == 0:
                    self.time_offset = time.time() - (time.monotonic() - frame.arrived) - frame.ts
                self._out_rate.tick()
                t0 = time.perf_counter()
                done = self.sampler.push(frame)
                if done:
                    self.latency.record("sample", time.perf_counter() - t0)
                for clip in done:
                    self.clips_sampled += 1
                    self.clips.put(clip)
        finally:
            self.clips.close()

    def _encode_loop(self) -> None:
        while not self._stop.is_set():
            batch = self.clips.get_batch(self.batch_size, timeout=_POLL_S)
            if not batch:
                if self.clips.closed and not len(self.clips):
                    return
                continue
            t0 = time.perf_counter()
            enc = self.encoder.encode_clips(np.stack([c.frames for c in batch]))  # (B, F, 3, S, S)
            t1 = time.perf_counter()
            ids = self.index.add(
                enc.embeddings,
                [c.start + self.time_offset for c in batch],
                [c.end + self.time_offset for c in batch],
                self.source_name,
                thumbnail=[c.thumbnail for c in batch],
                tokens=list(enc.tokens.astype(np.float16)),
            )
            t2 = time.perf_counter()
            self.latency.record("encode", t1 - t0)
            self.latency.record("index", t2 - t1)
            self.clips_indexed += len(ids)
            for clip_id, clip in zip(ids, batch, strict=True):
                self._clip_rate.tick()
                latency = time.monotonic() - clip.arrived
                self.latency.record("end_to_end", latency)
                start, end = clip.start + self.time_offset, clip.end + self.time_offset
                self._notify(IndexedClip(clip_id, start, end, self.source_name, latency))
            self._maybe_retain()

    def _notify(self, clip: IndexedClip) -> None:
        if self.on_clip is None:
            return
        try:
            self.on_clip(clip)
        except Exception:  # noqa: BLE001 - a user callback must not stop indexing
            log.exception("on_clip callback raised for clip %d", clip.id)

    def _maybe_retain(self) -> None:
        r = self.retention
        if r is None or time.monotonic() - self._last_retention < r.every_s:
            return
        self._last_retention = time.monotonic()
        deleted = self.index.apply_retention(r.max_age_s, r.max_bytes)
        if deleted:
            log.info("retention deleted %d clips", deleted)

    def stats(self) -> PipelineStats:
        """Current counters."""
        cap = self.capture.stats()
        error = self.error or self.capture.error
        running = any(t.is_alive() for t in [self.capture, *self._threads])
        return PipelineStats(
            frames_in=cap.frames_in,
            frames_dropped=self.frames.dropped,
            fps_in=cap.fps if cap.running else 0.0,
            fps_out=self._out_rate.rate(),
            clips_sampled=self.clips_sampled,
            clips_dropped=self.clips.dropped,
            clips_indexed=self.clips_indexed,
            clips_per_s=self._clip_rate.rate(),
            frame_ring=(len(self.frames), self.frames.peak, self.frames.capacity),
            clip_ring=(len(self.clips), self.clips.peak, self.clips.capacity),
            reconnects=cap.reconnects,
            gaps=self.sampler.gaps,
            running=running,
            ended=self._started and not running and self.error is None and not self._stop.is_set(),
            error=None if error is None else f"{type(error).__name__}: {error}",
        )

"""Chunked video store, frame-time sampling and video transforms in numpy + OpenCV (no torch).

Implements the reference §4 video pipeline so the on-device runtime can reuse it:

- storage: ``<root>/<video_uid>/<k>.mp4``, chunk ``k`` holding seconds ``[k * chunk_seconds, (k + 1) *
  chunk_seconds)``; a frame at time ``t`` is ``int(t * fps)`` of the video, chunk ``frame // frames_per_chunk``,
  index ``frame % frames_per_chunk`` inside it, so a clip may span two chunks;
- sampling: ``F`` equal bins over ``[start, end]``, a random time per bin in training, the bin midpoint in eval;
- a read past the end of a chunk repeats its last frame, as the reference loader does, with a warning;
- transforms (reference §2, Augmentation): train = RandomResizedCrop(scale 0.5-1) + horizontal flip +
  ImageNet normalisation; eval = Resize 256 -> CenterCrop 256 -> Resize 224, scaled to any output size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from egovlpv2_edge.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_frames, eval_transform, normalise, resize_all

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ChunkedVideoStore",
    "VideoReadError",
    "eval_transform",
    "sample_times",
    "train_transform",
]

logger = logging.getLogger(__name__)

# Frames decoded and dropped rather than sought over: a seek (back to a key frame, then forward) costs about as
# much as decoding ten small frames, and the frames of one clip lie a few apart (the same frames either way)
SKIP_BY_DECODING = 12


class VideoReadError(ValueError):
    """A chunk is missing or cannot be decoded (the message names the path and the fix)."""


def sample_times(start: float, end: float, num_frames: int, mode: Literal["train", "eval"] = "eval",
                 rng: np.random.Generator | None = None) -> np.ndarray:  # fmt: skip
    """Times (seconds) at which to read ``num_frames`` frames of the clip ``[start, end]``.

    The clip is split into ``num_frames`` equal bins; ``train`` takes a uniformly random time in each bin,
    ``eval`` the bin midpoints (reference §4, sampling).

    Args:
        start: Clip start in seconds.
        end: Clip end in seconds (> start).
        num_frames: Number of bins / frames F.
        mode: ``"train"`` or ``"eval"``.
        rng: Random generator for ``train`` (a fresh unseeded one when None).

    Returns:
        float64 array of shape (F,), increasing.

    Raises:
        ValueError: On an empty window, F < 1 or an unknown mode.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    if not end > start:
        raise ValueError(f"clip window [{start}, {end}] is empty; clip_end must be greater than clip_start")
    edges = np.linspace(start, end, num_frames + 1)
    if mode == "eval":
        return (edges[:-1] + edges[1:]) / 2
    if mode == "train":
        rng = rng if rng is not None else np.random.default_rng()
        return edges[:-1] + rng.random(num_frames) * (edges[1:] - edges[:-1])
    raise ValueError(f"mode={mode!r} is not one of 'train', 'eval'")


class ChunkedVideoStore:
    """Reads frames by time from videos stored as ``<root>/<video_uid>/<k>.mp4`` chunks.

    Args:
        root: Folder holding one sub-folder per video uid.
        chunk_seconds: Length of each chunk in seconds (reference: 600).
        fps: Frame rate of the stored videos; read from the video's first chunk when None.
    """

    def __init__(self, root: str | Path, chunk_seconds: float = 600.0, fps: float | None = None) -> None:
        if chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds={chunk_seconds} must be > 0")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps={fps} must be > 0, or None to read it from the files")
        self.root = Path(root)
        self.chunk_seconds = float(chunk_seconds)
        self.fps = fps
        self._fps_cache: dict[str, float] = {}
        self._opened: set[Path] = set()  # chunks check_chunks found readable

    def chunk_path(self, video_uid: str, k: int) -> Path:
        """Path of chunk ``k`` of ``video_uid``."""
        return self.root / video_uid / f"{k}.mp4"

    def _open(self, path: Path) -> cv2.VideoCapture:
        if not path.is_file():
            raise VideoReadError(f"video chunk {path} does not exist; check the video root ({self.root}) and "
                                 "chunk_seconds, or regenerate the data with 'egovlp data synth'")  # fmt: skip
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened() or int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) <= 0:
            cap.release()
            raise VideoReadError(f"video chunk {path} cannot be decoded (corrupt or not an mp4); "
                                 "delete it and regenerate or re-download the video")  # fmt: skip
        return cap

    def check_chunks(self, video_uid: str, start: float, end: float) -> None:
        """Open every chunk that frames sampled from ``[start, end)`` seconds of ``video_uid`` can fall in.

        The window's last frame is taken half a frame before ``end``, so a window that ends on a chunk boundary
        does not ask for the next chunk.

        Raises:
            VideoReadError: A chunk is missing or cannot be opened for decoding (the first such).
        """
        fps, per_chunk = self._chunk_frames(video_uid)
        first, last = (self.frame_index(video_uid, t) // per_chunk for t in (start, max(start, end - 0.5 / fps)))
        for k in range(first, last + 1):
            path = self.chunk_path(video_uid, k)
            if path not in self._opened:  # each good chunk is opened once however many clips need it
                self._open(path).release()
                self._opened.add(path)

    def _chunk_frames(self, video_uid: str) -> tuple[float, int]:
        """The video's frame rate and the number of frames in each of its chunks."""
        fps = self.video_fps(video_uid)
        return fps, max(1, int(round(self.chunk_seconds * fps)))

    def video_fps(self, video_uid: str) -> float:
        """The frame rate used for ``video_uid`` (the constructor's, or the first chunk's)."""
        if self.fps is not None:
            return float(self.fps)
        if video_uid not in self._fps_cache:
            cap = self._open(self.chunk_path(video_uid, 0))
            fps = float(cap.get(cv2.CAP_PROP_FPS))
            cap.release()
            if not fps > 0:
                raise VideoReadError(f"{self.chunk_path(video_uid, 0)} reports fps={fps}; pass fps= explicitly")
            self._fps_cache[video_uid] = fps
        return self._fps_cache[video_uid]

    def frame_index(self, video_uid: str, t: float) -> int:
        """Index of the frame shown at time ``t`` (seconds) in the whole video."""
        return max(0, int(math.floor(t * self.video_fps(video_uid) + 1e-6)))

    def read_frames(self, video_uid: str, times: Sequence[float]) -> np.ndarray:
        """Decode the frames at ``times`` (seconds), in the given order.

        Args:
            video_uid: Video to read.
            times: Times in seconds; may fall in different chunks.

        Returns:
            uint8 array (F, H, W, 3), RGB.

        Raises:
            VideoReadError: If a needed chunk is missing or cannot be decoded.
        """
        if len(times) == 0:
            raise ValueError("times is empty; pass at least one time")
        _, per_chunk = self._chunk_frames(video_uid)
        wanted = [self.frame_index(video_uid, t) for t in times]
        by_chunk: dict[int, list[int]] = {}
        for f in sorted(set(wanted)):
            by_chunk.setdefault(f // per_chunk, []).append(f % per_chunk)
        decoded: dict[int, np.ndarray] = {}
        for k, local in by_chunk.items():
            for i, frame in zip(local, self._read_chunk(self.chunk_path(video_uid, k), local), strict=True):
                decoded[k * per_chunk + i] = frame
        return np.stack([decoded[f] for f in wanted])

    def _read_chunk(self, path: Path, local: list[int]) -> list[np.ndarray]:
        """Frames at sorted in-chunk indices; past the end the last frame is repeated (with a warning)."""
        cap = self._open(path)
        try:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            out, last, pos = [], None, -1
            for i in local:
                if i >= n:  # the frame at the chunk's end time is one past the last: only further is a problem
                    log = logger.debug if i == n else logger.warning
                    log("%s has %d frames; frame %d requested, repeating the last frame", path, n, i)
                    i = n - 1
                if i == pos:  # the same frame again (several times past the end)
                    ok, frame = True, last
                else:
                    if pos < i <= pos + 1 + SKIP_BY_DECODING:  # a short gap: decoding through it beats a seek
                        for _ in range(i - pos - 1):
                            cap.grab()
                    else:
                        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                    ok, frame = cap.read()
                if not ok or frame is None:
                    if last is None:
                        raise VideoReadError(f"video chunk {path} cannot be decoded at frame {i} of {n}; "
                                             "delete it and regenerate or re-download the video")  # fmt: skip
                    logger.warning("%s: frame %d unreadable, repeating the previous frame", path, i)
                    frame = last
                last, pos = frame, i
                out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            return out
        finally:
            cap.release()


def train_transform(frames: np.ndarray, size: int, rng: np.random.Generator, hflip: bool = True) -> np.ndarray:
    """RandomResizedCrop(size, scale=(0.5, 1), ratio=(3/4, 4/3)) + horizontal flip (p=0.5) + normalisation.

    The same crop and flip apply to every frame of the clip.

    Args:
        frames: uint8 (F, H, W, 3) RGB.
        size: Output side in pixels.
        rng: Random generator.
        hflip: Allow the flip; pass False for clips whose text names a side or a turning direction.

    Returns:
        float32 (F, 3, size, size).
    """
    check_frames(frames)
    _, h, w, _ = frames.shape
    area = h * w
    for _ in range(10):  # torchvision's sampling: area scale and log-uniform aspect ratio, 10 tries
        target = area * rng.uniform(0.5, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:  # fall back to a centre crop
        cw, ch = min(w, h), min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    out = resize_all(frames[:, y0 : y0 + ch, x0 : x0 + cw], size, size)
    if hflip and rng.random() < 0.5:
        out = out[:, :, ::-1]
    return normalise(out)

"""Chunked video store, frame sampling and transforms (numpy + OpenCV, no torch)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egovlpv2_edge.training.data.egoclip import read_egoclip
from egovlpv2_edge.training.data.synth import read_watermark
from egovlpv2_edge.training.data.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChunkedVideoStore,
    VideoReadError,
    eval_transform,
    sample_times,
    train_transform,
)

from .conftest import TINY


def test_sample_times_eval_is_bin_midpoints() -> None:
    assert sample_times(2.0, 6.0, 4, "eval").tolist() == [2.5, 3.5, 4.5, 5.5]


def test_sample_times_train_one_random_time_per_bin() -> None:
    rng = np.random.default_rng(0)
    draws = np.stack([sample_times(2.0, 6.0, 4, "train", rng) for _ in range(200)])
    lo = np.array([2.0, 3.0, 4.0, 5.0])
    assert np.all(draws >= lo) and np.all(draws < lo + 1.0)
    assert draws.std(axis=0).min() > 0.2  # really random within each bin
    again = sample_times(2.0, 6.0, 4, "train", np.random.default_rng(1))
    assert np.array_equal(again, sample_times(2.0, 6.0, 4, "train", np.random.default_rng(1)))


def test_sample_times_errors() -> None:
    with pytest.raises(ValueError, match="mode='test' is not one of 'train', 'eval'"):
        sample_times(0, 1, 4, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        sample_times(3, 3, 4)


def _spanning_clip(root: Path):
    recs = read_egoclip(root / "egoclip.csv")
    return next(r for r in recs if int(r.clip_start // TINY.chunk_seconds) != int(r.clip_end // TINY.chunk_seconds))


def test_clip_spanning_two_chunks_reads_the_right_frames(tiny) -> None:
    rec = _spanning_clip(tiny)
    store = ChunkedVideoStore(tiny / "videos", chunk_seconds=TINY.chunk_seconds)  # fps read from the file
    times = np.linspace(rec.clip_start, rec.clip_end - 1e-3, 16)
    frames = store.read_frames(rec.video_uid, times)
    assert frames.shape == (16, TINY.size, TINY.size, 3) and frames.dtype == np.uint8
    assert store.video_fps(rec.video_uid) == pytest.approx(TINY.fps)
    expected = [int(np.floor(t * TINY.fps + 1e-6)) for t in times]
    assert [read_watermark(f) for f in frames] == expected
    per_chunk = int(TINY.chunk_seconds * TINY.fps)
    assert len({e // per_chunk for e in expected}) == 2
    shuffled = store.read_frames(rec.video_uid, times[::-1])  # order of the request is kept
    assert [read_watermark(f) for f in shuffled] == expected[::-1]


def test_short_gaps_are_decoded_through_and_long_ones_sought_with_the_same_frames(tiny) -> None:
    import cv2

    from egovlpv2_edge.training.data.video import SKIP_BY_DECODING

    uid = read_egoclip(tiny / "egoclip.csv")[0].video_uid
    cap = cv2.VideoCapture(str(tiny / "videos" / uid / "0.mp4"))
    every = []  # the chunk decoded frame by frame
    while (got := cap.read())[0]:
        every.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB))
    cap.release()
    g = SKIP_BY_DECODING
    # after each frame: the next one, a gap of 1, the longest gap decoded through (g), one longer (sought), the next
    # one again, and a long gap (sought)
    wanted = [0, 1, 3, 3 + g + 1, 3 + 2 * g + 3, 3 + 2 * g + 4, 90]
    assert wanted[-1] < len(every) and wanted[3] - wanted[2] - 1 == g and wanted[4] - wanted[3] - 1 == g + 1
    store = ChunkedVideoStore(tiny / "videos", chunk_seconds=TINY.chunk_seconds, fps=TINY.fps)
    frames = store.read_frames(uid, [(i + 0.5) / TINY.fps for i in wanted])
    assert [read_watermark(f) for f in frames] == wanted
    assert all(np.array_equal(f, every[i]) for f, i in zip(frames, wanted, strict=True))


def test_frames_are_rgb(tmp_path) -> None:
    import cv2

    folder = tmp_path / "v"
    folder.mkdir()
    w = cv2.VideoWriter(str(folder / "0.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for _ in range(5):
        w.write(np.full((32, 32, 3), (255, 0, 0), np.uint8))  # pure blue in OpenCV's BGR
    w.release()
    frame = ChunkedVideoStore(tmp_path, chunk_seconds=600).read_frames("v", [0.2])[0]
    assert frame[..., 2].mean() > 200 and frame[..., 0].mean() < 50


def test_missing_chunk_raises_with_path_and_fix(tiny) -> None:
    rec = read_egoclip(tiny / "egoclip.csv")[0]
    store = ChunkedVideoStore(tiny / "videos", chunk_seconds=TINY.chunk_seconds, fps=TINY.fps)
    with pytest.raises(VideoReadError) as err:
        store.read_frames(rec.video_uid, [rec.video_dur + 100.0])
    msg = str(err.value)
    assert f"{rec.video_uid}/{int((rec.video_dur + 100) // TINY.chunk_seconds)}.mp4 does not exist" in msg
    assert "chunk_seconds" in msg and "regenerate" in msg
    with pytest.raises(VideoReadError, match="does not exist"):
        ChunkedVideoStore(tiny / "videos", chunk_seconds=10).read_frames("no-such-video", [1.0])


def test_corrupt_chunk_raises(tmp_path, tiny) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "0.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    store = ChunkedVideoStore(tmp_path, chunk_seconds=10, fps=10)
    with pytest.raises(VideoReadError, match=r"broken/0.mp4 cannot be decoded \(corrupt or not an mp4\)"):
        store.read_frames("broken", [0.5])


def test_reading_past_the_end_repeats_the_last_frame_and_logs(tiny, caplog) -> None:
    recs = read_egoclip(tiny / "egoclip.csv")
    rec = recs[0]
    store = ChunkedVideoStore(tiny / "videos", chunk_seconds=TINY.chunk_seconds, fps=TINY.fps)
    n_frames = int(round(rec.video_dur * TINY.fps))
    last_t = (n_frames - 1) / TINY.fps
    chunk_end = (int(last_t // TINY.chunk_seconds) + 1) * TINY.chunk_seconds
    with caplog.at_level(logging.WARNING, logger="egovlpv2_edge.training.data.video"):
        frames = store.read_frames(rec.video_uid, [last_t, chunk_end - 0.05, chunk_end - 0.01])
    assert [read_watermark(f) for f in frames] == [n_frames - 1] * 3
    assert any("repeating the last frame" in r.getMessage() for r in caplog.records)


def test_train_transform_shapes_crop_flip_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    frames = np.empty((3, 48, 64, 3), np.uint8)
    frames[:] = (IMAGENET_MEAN * 255).round().astype(np.uint8)
    out = train_transform(frames, 32, rng)
    assert out.shape == (3, 3, 32, 32) and out.dtype == np.float32
    assert np.abs(out).max() < 0.02  # the mean colour normalises to ~0
    white = np.full((1, 48, 64, 3), 255, np.uint8)
    assert np.allclose(train_transform(white, 16, rng)[0, :, 0, 0], (1 - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-5)
    ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, None, :, None] * 4, (2, 64, 64, 3)).copy()
    flips = []
    for seed in range(20):
        x = train_transform(ramp, 16, np.random.default_rng(seed))
        assert np.array_equal(x[0], x[1])  # one crop and flip for the whole clip
        flips.append(x[0, 0, 0, 0] > x[0, 0, 0, -1])
        y = train_transform(ramp, 16, np.random.default_rng(seed), hflip=False)
        assert y[0, 0, 0, 0] < y[0, 0, 0, -1]
    assert 3 < sum(flips) < 17


def test_eval_transform_is_resize_centre_crop_resize() -> None:
    frames = np.zeros((2, 64, 96, 3), np.uint8)
    frames[:, :, :16] = 255  # a white band on the left that the centre crop removes
    out = eval_transform(frames, 28)
    assert out.shape == (2, 3, 28, 28) and out.dtype == np.float32
    black = -IMAGENET_MEAN / IMAGENET_STD
    assert np.allclose(out[0, :, :, 0], black[:, None], atol=1e-4)
    square = np.zeros((1, 64, 64, 3), np.uint8)
    square[:, :, :8] = 255  # a square frame keeps its whole view (CenterCrop 256 of a 256 x 256 frame)
    kept = eval_transform(square, 56)[0, :, :, 0]
    white = (1 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(kept, white[:, None], atol=1e-4)


def test_transform_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match=r"uint8 \(F, H, W, 3\)"):
        eval_transform(np.zeros((4, 32, 32), np.uint8), 16)


def test_video_module_does_not_import_torch() -> None:
    code = "import sys, egovlpv2_edge.training.data.video as v; assert 'torch' not in sys.modules, 'torch'"
    env_path = str(Path(__import__("egovlpv2_edge").__path__[0]).parent)  # wherever the package is importable
    import os

    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": env_path + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert res.returncode == 0, res.stderr

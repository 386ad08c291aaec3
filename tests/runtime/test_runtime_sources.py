"""Video sources: file playback and pacing, open errors, reconnect with backoff, FrameRing, spec parsing."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from egovlpv2_edge.runtime.sources import (
    CaptureThread,
    Frame,
    FrameRing,
    ReconnectPolicy,
    SourceDisconnectedError,
    SourceOpenError,
    jetson_csi_pipeline,
    open_source,
    parse_spec,
)
from egovlpv2_edge.runtime.testing import FakeCameraFactory, frame_number

FPS = 20.0
N_FRAMES = 20  # 1 s of video


def _write_video(path: Path, n: int = N_FRAMES, fps: float = FPS, size: tuple[int, int] = (48, 64)) -> Path:
    H, W = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened(), "this OpenCV build cannot write mp4v"
    for _ in range(n):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[..., 0] = 255  # pure blue in BGR
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_file_plays_to_end_with_file_timestamps(video: Path) -> None:
    with open_source(str(video)) as src:
        assert not src.live and src.fps == pytest.approx(FPS)
        frames = list(src)
        assert src.ended and src.read() is None
    assert len(frames) == N_FRAMES
    assert [f.index for f in frames] == list(range(N_FRAMES))
    ts = np.array([f.ts for f in frames])
    assert ts[0] == 0.0 and np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(np.diff(ts), 1.0 / FPS, atol=1e-3)  # positions come from the file
    image = frames[0].image
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert image[..., 2].mean() > 200 and image[..., 0].mean() < 50  # BGR blue arrives as RGB blue


def test_realtime_paces_at_file_rate_and_fast_mode_does_not(video: Path) -> None:
    duration = (N_FRAMES - 1) / FPS
    t0 = time.monotonic()
    with open_source(video, realtime=True) as src:
        assert len(list(src)) == N_FRAMES
    realtime_s = time.monotonic() - t0
    t0 = time.monotonic()
    with open_source(video, realtime=False) as src:
        assert len(list(src)) == N_FRAMES
    fast_s = time.monotonic() - t0
    assert realtime_s >= 0.5 * duration
    assert fast_s < realtime_s


def test_unreadable_file_raises_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(SourceOpenError, match=r"OpenCV could not open or decode video file '.*garbage\.mp4'"):
        open_source(str(garbage))
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        open_source(str(tmp_path / "missing.mp4"))


def _reconnect_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [r.args[2] for r in caplog.records if r.msg.endswith("reconnect attempt %d in %.2f s")]


def test_device_reconnects_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCameraFactory([5, 4, None], failed_reopens=2)
    policy = ReconnectPolicy(initial_s=0.01, max_s=0.02, factor=2.0)
    with caplog.at_level(logging.INFO, logger="egovlpv2_edge.runtime.sources"):
        with open_source(0, reconnect=policy, capture_factory=camera) as src:
            frames = [src.read() for _ in range(20)]
    assert src.reconnects == 2 and camera.connections == 3
    assert len(camera.calls) == 1 + 2 * 3  # first open, then per drop: two failed opens and one that works
    assert _reconnect_delays(caplog) == [0.01, 0.02, 0.02] * 2  # doubles, capped, reset by a good frame
    assert [frame_number(f.image) for f in frames] == list(range(20))  # no frame lost or repeated
    assert [f.index for f in frames] == list(range(20))
    ts = [f.ts for f in frames]
    assert ts[0] == 0.0 and ts == sorted(ts) and ts[-1] >= 0.04  # capture clock spans the backoff waits


def test_device_gives_up_after_max_attempts() -> None:
    camera = FakeCameraFactory([3, 3], failed_reopens=10)
    src = open_source(
        "0", reconnect=ReconnectPolicy(initial_s=0.001, max_s=0.002, max_attempts=3), capture_factory=camera
    )
    assert [src.read() is not None for _ in range(3)] == [True] * 3
    with pytest.raises(SourceDisconnectedError, match="still disconnected after 3 reconnect attempts"):
        src.read()
    src.close()


def test_capture_thread_keeps_frames_flowing_across_drops() -> None:
    camera = FakeCameraFactory([10, None], fps=500.0, pace=True)
    ring = FrameRing(8)
    src = open_source(1, reconnect=ReconnectPolicy(initial_s=0.005), capture_factory=camera)
    thread = CaptureThread(src, ring)
    thread.start()
    got: list[Frame] = []
    while len(got) < 40:
        frame = ring.get(timeout=5.0)
        assert frame is not None, thread.stats()
        got.append(frame)
    stats = thread.stats()
    thread.stop()
    assert not thread.is_alive() and ring.closed and src.ended
    assert stats.running and stats.reconnects == 1 and stats.error is None and stats.fps > 0
    numbers = [frame_number(f.image) for f in got]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    final = thread.stats()
    assert final.frames_in == len(got) + len(ring.drain()) + final.dropped  # every frame accounted for


def test_capture_thread_reports_a_dead_source() -> None:
    camera = FakeCameraFactory([2], failed_reopens=100)
    src = open_source(0, reconnect=ReconnectPolicy(initial_s=0.001, max_attempts=2), capture_factory=camera)
    ring = FrameRing(4)
    thread = CaptureThread(src, ring)
    thread.start()
    thread.join(5.0)
    stats = thread.stats()
    assert not stats.running and stats.frames_in == 2 and "SourceDisconnectedError" in stats.error
    assert ring.closed and len(ring.drain()) == 2 and ring.get(timeout=0.01) is None


def test_frame_ring_drops_oldest_and_never_blocks_producer() -> None:
    ring = FrameRing(4)
    pushed = 2000
    sizes: list[int] = []
    received: list[int] = []

    def slow_consumer() -> None:
        while (frame := ring.get(timeout=2.0)) is not None:
            received.append(frame.index)
            time.sleep(0.002)

    consumer = threading.Thread(target=slow_consumer)
    consumer.start()
    image = np.zeros((2, 2, 3), np.uint8)
    t0 = time.monotonic()
    for i in range(pushed):
        ring.put(Frame(image, i / 30.0, i))
        sizes.append(len(ring))
    producer_s = time.monotonic() - t0
    ring.close()
    consumer.join(5.0)
    assert max(sizes) <= ring.capacity  # memory bounded by capacity
    assert producer_s < 0.002 * pushed / 4  # far faster than the consumer: put never waited for it
    assert ring.pushed == pushed and ring.dropped > pushed / 2
    assert len(received) + ring.dropped == pushed  # each frame either consumed or counted as dropped
    assert received == sorted(received) and received[-1] == pushed - 1  # oldest dropped, newest kept


def test_frame_ring_get_drain_close() -> None:
    ring = FrameRing(2)
    image = np.zeros((1, 1, 3), np.uint8)
    assert ring.get(timeout=0.01) is None
    assert ring.put(Frame(image, 0.0, 0)) is False
    ring.put(Frame(image, 0.1, 1))
    assert ring.put(Frame(image, 0.2, 2)) is True  # evicted frame 0
    assert [f.index for f in ring.drain()] == [1, 2] and len(ring) == 0
    waiter_result: list[Frame | None] = []
    waiter = threading.Thread(target=lambda: waiter_result.append(ring.get()))
    waiter.start()
    ring.close()  # wakes a consumer blocked without timeout
    waiter.join(2.0)
    assert not waiter.is_alive() and waiter_result == [None]
    with pytest.raises(ValueError, match="capacity must be an int >= 1, got 0"):
        FrameRing(0)


def test_gstreamer_pipeline_uses_gstreamer_backend() -> None:
    pipeline = (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=2"
    )
    assert jetson_csi_pipeline() == pipeline
    camera = FakeCameraFactory(None)
    with open_source(pipeline, capture_factory=camera) as src:
        assert src.live and src.read() is not None
    assert camera.calls == [(pipeline, cv2.CAP_GSTREAMER)]


@pytest.mark.parametrize(
    ("spec", "kind", "target", "api"),
    [
        (0, "device", 0, cv2.CAP_ANY),
        ("2", "device", 2, cv2.CAP_ANY),
        (" 1 ", "device", 1, cv2.CAP_ANY),
        ("/dev/video3", "device", "/dev/video3", cv2.CAP_V4L2),
        ("rtsp://user:pw@10.0.0.2:554/stream", "stream", "rtsp://user:pw@10.0.0.2:554/stream", cv2.CAP_ANY),
        ("https://example.com/a.m3u8", "stream", "https://example.com/a.m3u8", cv2.CAP_ANY),
        ("videotestsrc ! appsink", "gstreamer", "videotestsrc ! appsink", cv2.CAP_GSTREAMER),
        ("clips/walk.mp4", "file", "clips/walk.mp4", cv2.CAP_ANY),
        ("file:///data/walk.mp4", "file", "/data/walk.mp4", cv2.CAP_ANY),
    ],
)
def test_parse_spec(spec: str | int, kind: str, target: str | int, api: int) -> None:
    parsed = parse_spec(spec)
    assert (parsed.kind, parsed.target, parsed.api_preference) == (kind, target, api)


def test_parse_spec_rejects_bad_specs() -> None:
    with pytest.raises(ValueError, match="device index must be >= 0, got -1"):
        parse_spec(-1)
    with pytest.raises(ValueError, match="source spec is empty"):
        parse_spec("  ")
    with pytest.raises(TypeError, match="got bool"):
        parse_spec(True)


def test_stream_credentials_hidden_from_logs(caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCameraFactory([1, None])
    url = "rtsp://admin:secret@10.0.0.2/live"
    with caplog.at_level(logging.INFO, logger="egovlpv2_edge.runtime.sources"):
        with open_source(url, reconnect=ReconnectPolicy(initial_s=0.001), capture_factory=camera) as src:
            assert src.read() is not None and src.read() is not None
    assert camera.calls[0] == (url, cv2.CAP_ANY) and src.reconnects == 1
    assert "secret" not in caplog.text and "rtsp://***@10.0.0.2/live" in caplog.text


def test_unopenable_device_raises_clear_error() -> None:
    class Closed:
        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return False

        def release(self) -> None:
            pass

    with pytest.raises(SourceOpenError, match="could not open device source '0'"):
        open_source(0, capture_factory=lambda target, api: Closed())

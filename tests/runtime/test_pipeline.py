"""The streaming pipeline: clip sampling on the package window, back-pressure with a slow encoder, concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from egovlpv2_edge.package import Preprocessing
from egovlpv2_edge.preprocess import eval_transform
from egovlpv2_edge.runtime.pipeline import ClipSampler
from egovlpv2_edge.runtime.sources import Frame
from egovlpv2_edge.runtime.testing import FakeCameraFactory

PRE = Preprocessing(2, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), clip_seconds=2.0, stride_seconds=1.0, text_max_length=8)


def _frame(i: int, ts: float) -> Frame:
    return Frame(np.full((24, 40, 3), i, np.uint8), ts, i)


def _which(frames: np.ndarray) -> list[int]:
    """Frame numbers of a clip's preprocessed frames (frames are filled with their number)."""
    ref = {i: eval_transform(_frame(i, 0).image[None], 32, PRE.mean, PRE.std)[0] for i in range(256)}
    return [next(i for i, r in ref.items() if np.array_equal(f, r)) for f in frames]


def test_sampler_slides_the_package_window_and_picks_bin_midpoints() -> None:
    sampler = ClipSampler(PRE)
    clips = [c for i in range(60) for c in sampler.push(_frame(i, i / 10))]  # 6 s at 10 fps
    assert [(c.start, c.end) for c in clips] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 6.0)]
    assert [_which(c.frames) for c in clips] == [[5, 15], [15, 25], [25, 35], [35, 45], [45, 55]]  # bin midpoints
    assert all(c.frames.shape == (2, 3, 32, 32) and c.frames.dtype == np.float32 for c in clips)
    assert all(c.thumbnail and c.thumbnail[:2] == b"\xff\xd8" for c in clips)  # JPEG


def test_sampler_takes_the_nearest_frame_and_restarts_after_a_gap() -> None:
    sampler = ClipSampler(PRE, thumbnails=False)
    times = [0.0, 0.45, 0.58, 1.6, 2.2]  # irregular (dropped frames): 0.5 -> 0.45, 1.5 -> 1.6
    clips = [c for i, t in enumerate(times) for c in sampler.push(_frame(i, t))]
    assert [(c.start, _which(c.frames)) for c in clips] == [(0.0, [1, 3])]
    assert clips[0].thumbnail is None
    assert sampler.push(_frame(9, 30.0)) == [] and sampler.gaps == 1  # reconnect: grid restarts at 30 s
    clips = [c for i in range(10, 40) for c in sampler.push(_frame(i, 30.0 + (i - 9) / 10))]
    assert clips[0].start == 30.0


def _slow(encode, delay: float):
    def slow(frames: np.ndarray):
        time.sleep(delay)
        return encode(frames)

    return slow


def test_slow_encoder_drops_clips_not_frames_and_memory_stays_bounded(fast_package: Path, tmp_path: Path) -> None:
    import egovlpv2_edge
    from egovlpv2_edge.runtime._metrics import rss_bytes

    camera = FakeCameraFactory(pace=True, fps=100.0, size=(240, 320))
    rt = egovlpv2_edge.open(fast_package, 0, tmp_path / "ix", capture_factory=camera, batch_size=2, clip_queue=4,
                            ring_frames=16)  # fmt: skip
    with rt:
        rt.encoder.encode_clips = _slow(rt.encoder.encode_clips, 0.5)  # 4 clips/s; the stream makes 10 clips/s
        rt.start()
        time.sleep(1.5)
        rss_start, t0, frames0 = rss_bytes(), time.monotonic(), rt.stats().stream.frames_in
        samples = []
        while time.monotonic() - t0 < 4.0:
            time.sleep(0.25)
            samples.append(rt.stats().stream)
        frames_per_s = (samples[-1].frames_in - frames0) / (time.monotonic() - t0)
        rss_end = rss_bytes()
        rt.stop()
        final = rt.stats().stream
    assert frames_per_s > 60  # capture keeps the camera's pace (~100 fps less read time) despite the encoder
    assert final.clips_dropped > 5 and final.frames_dropped == 0  # the oldest clips go, every frame is sampled
    assert final.clips_sampled == final.clips_indexed + final.clips_dropped  # every clip accounted for
    assert all(s.clip_ring[1] <= 4 and s.frame_ring[1] <= 16 for s in samples)  # bounded queues
    assert rss_end - rss_start < 40 * 2**20  # 400 frames of 230 kB went through; none piled up


def test_queries_from_several_threads_while_streaming(fast_package: Path, tmp_path: Path) -> None:
    import egovlpv2_edge

    indexed: list[int] = []
    first = threading.Event()

    def on_clip(clip) -> None:
        indexed.append(clip.id)
        first.set()

    camera = FakeCameraFactory(pace=True, fps=60.0)
    errors: list[BaseException] = []
    counts = {"search": 0, "ask": 0}
    with egovlpv2_edge.open(fast_package, 0, tmp_path / "ix", capture_factory=camera, on_clip=on_clip) as rt:
        rt.start()
        assert first.wait(30)
        stop = time.monotonic() + 3.0

        def query(kind: str, n: int) -> None:
            try:
                while time.monotonic() < stop:
                    if kind == "search":
                        moments = rt.search(f"#C C opens the red box {n % 3}", k=5)
                        assert moments and all(a.score >= b.score for a, b in zip(moments, moments[1:], strict=False))
                    else:
                        answer = rt.ask("what did C open?", ["the red box", "the blue cup"], k=3)
                        assert answer.answer in ("the red box", "the blue cup") and answer.evidence
                    counts[kind] += 1
            except BaseException as e:  # noqa: BLE001 - collected for the assertion below
                errors.append(e)

        threads = [threading.Thread(target=query, args=(k, i)) for i, k in enumerate(["search", "ask"] * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rt.stop()
        stats = rt.stats()
        stored = {m.id for m in rt.search("anything", k=len(rt.index) + 10)}
    assert not errors, errors
    assert counts["search"] > 5 and counts["ask"] > 5
    assert stats.stream.error is None and stats.stream.clips_indexed == len(indexed) > 10
    assert stats.stream.clips_sampled == stats.stream.clips_indexed + stats.stream.clips_dropped
    assert set(indexed) == stored  # no committed clip lost
    assert {"search", "ask", "encode", "end_to_end"} <= set(stats.latency)


@pytest.mark.parametrize("batch_size", [0, True])
def test_bad_batch_size_is_named(fast_package: Path, tmp_path: Path, batch_size: object) -> None:
    import egovlpv2_edge

    with pytest.raises(ValueError, match="batch_size"):
        egovlpv2_edge.open(fast_package, 0, tmp_path / "ix", capture_factory=FakeCameraFactory(), batch_size=batch_size)


def test_a_file_read_as_fast_as_possible_is_indexed_whole(package: Path, video_file: Path, tmp_path: Path) -> None:
    import egovlpv2_edge

    with egovlpv2_edge.open(package, video_file, tmp_path / "ix", batch_size=1, clip_queue=1, ring_frames=2) as rt:
        rt.encoder.encode_clips = _slow(rt.encoder.encode_clips, 0.2)  # the file decodes far faster
        rt.start()
        assert rt.wait(60)
        stream = rt.stats().stream
    assert (stream.frames_in, stream.frames_dropped, stream.clips_indexed, stream.clips_dropped) == (60, 0, 5, 0)

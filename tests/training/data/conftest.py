"""Tiny synthetic datasets shared by the data tests (generated once per session into a temp folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egovlpv2_edge.training.data.synth import SynthConfig, generate_dataset

HOLDOUT = ("pick_up:red_cup", "open:green_box")
TINY = SynthConfig(videos=6, seed=3, size=64, fps=10, chunk_seconds=10, min_actions=7, max_actions=10,
                   holdout_pairs=HOLDOUT, holdout_rate=0.5, watermark=True, workers=1)  # fmt: skip


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 64x64 videos at 10 fps in 10-s chunks, frame indices watermarked, two held-out pairs."""
    out = tmp_path_factory.mktemp("tiny")
    generate_dataset(out, TINY)
    return out


def micro(seed: int, watermark: bool = False) -> SynthConfig:
    """Two very short 32x32 videos: enough to compare runs."""
    return SynthConfig(videos=2, seed=seed, size=32, fps=10, chunk_seconds=5, min_actions=3, max_actions=4,
                       watermark=watermark, workers=1)  # fmt: skip

"""A tiny synthetic dataset (with its QA and NLQ splits) and the tiny model shared by the task tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from egovlpv2_edge.training.data.synth import SynthConfig, generate_dataset

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SMALL = SynthConfig(videos=6, seed=2, size=32, fps=10, chunk_seconds=20, min_actions=8, max_actions=10, workers=1)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short 32x32 videos with qa.json and nlq_{train,val,test}.json."""
    out = tmp_path_factory.mktemp("tasks_data")
    generate_dataset(out, SMALL)
    return out

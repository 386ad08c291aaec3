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


@pytest.fixture(scope="session")
def pretrained(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in pre-trained checkpoint (tiny preset) with its tokenizer.json beside it."""
    from egovlpv2_edge import create_model
    from egovlpv2_edge.checkpoint import save_checkpoint
    from egovlpv2_edge.training.text import load_or_train_tokenizer

    out = tmp_path_factory.mktemp("teacher")
    model = create_model("egovlpv2_test")
    load_or_train_tokenizer(model.cfg.text, small_data / "egoclip.csv", out / "tokenizer.json")
    save_checkpoint(model, out / "teacher.pt", step=0)
    return out / "teacher.pt"

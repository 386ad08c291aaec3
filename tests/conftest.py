"""Shared fixtures: deterministic seeds and tiny inputs for the test preset."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    try:
        import torch
    except ImportError:  # torch-free runtime tests
        return
    torch.manual_seed(0)

"""Fixtures for the core model tests."""

from __future__ import annotations

import pytest

from egovlpv2_edge import create_model
from egovlpv2_edge.model import EgoVLPv2


@pytest.fixture
def tiny() -> EgoVLPv2:
    return create_model("egovlpv2_test")

"""Parameter counts of the paper presets match the released checkpoint (reference Sec. 6 and 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from egovlpv2_edge import create_model as _create_model


def create_model(name: str, **overrides) -> torch.nn.Module:
    """Counting needs shapes only: build on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        return _create_model(name, **overrides)


TSV = Path(__file__).parents[1] / "data" / "egovlpv2_state_dict_keys.tsv"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _official_total() -> int:
    total = 0
    for line in TSV.read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.endswith("position_ids"):  # a buffer, not a parameter
            continue
        n = 1
        for d in shape.strip("[]").split(","):
            n *= int(d)
        total += n
    return total


@pytest.fixture(scope="module")
def base():
    return create_model("egovlpv2_base")


def test_base_counts_match_the_reference(base) -> None:
    M = base.cfg.fusion.num_layers
    cross = base.cross_attention_modules()
    video_cross = sum(_count(m) for m in cross[:M])
    text_cross = sum(_count(m) for m in cross[M:])
    assert _count(base.video) == pytest.approx(128.35e6, rel=1e-3)
    assert video_cross == pytest.approx(14.18e6, rel=1e-3)
    assert _count(base.text) == pytest.approx(138.23e6, rel=1e-3)
    assert text_cross == pytest.approx(14.17e6, rel=1e-3)
    assert _count(base) == pytest.approx(381.6e6, rel=1e-3)
    # exact: the released state dict has 381,611,623 parameters
    assert _count(base) == _official_total() == 381_611_623
    assert len(base.gates()) == 12


def test_smallproj_counts() -> None:
    model = create_model("egovlpv2_base_smallproj")
    assert _count(model) == pytest.approx(308.6e6, rel=1e-3)
    assert model.txt_proj[1].weight.shape == (256, 768) and model.vid_proj[0].weight.shape == (256, 768)


def test_256d_mlp_projection_two_frame_build_matches_the_official_count() -> None:
    model = create_model(
        "egovlpv2_base", video={"num_frames": 2}, heads={"embed_dim": 256, "proj_hidden": 256, "projection": "mlp"}
    )
    assert _count(model) == 308_849_767

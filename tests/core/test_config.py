"""Presets: every preset builds and runs; configs validate and merge overrides."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from egovlpv2_edge import create_model, get_config, list_models
from egovlpv2_edge.config import ModelConfig

from .helpers import random_inputs

SMALL_PRESETS = ["egovlpv2_test", "egovlpv2_edge", "egovlpv2_small"]


def test_list_models_has_the_required_presets() -> None:
    assert {"egovlpv2_base", "egovlpv2_base_smallproj", "egovlpv2_small", "egovlpv2_edge", "egovlpv2_test"} <= set(
        list_models()
    )


@pytest.mark.parametrize("name", list_models())
def test_every_preset_resolves_and_round_trips(name: str) -> None:
    cfg = get_config(name)
    assert cfg.name == name
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.video.width = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_small_presets_build_and_run_both_modes(name: str) -> None:
    model = create_model(name)
    frames, ids, mask = random_inputs(model)
    with torch.no_grad():
        v = model.encode_video(frames, normalize=True)
        t = model.encode_text(ids, mask, normalize=True)
        out = model.forward_fusion(frames, ids, mask, mlm=True)
    E = model.cfg.heads.embed_dim
    assert v.shape == (2, E) and t.shape == (2, E)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out.vtm_logits.shape == (2, 2)
    assert out.mlm_logits.shape == (2, model.cfg.text.max_length, model.cfg.text.vocab_size)
    assert out.video_cls.shape == (2, model.cfg.video.width)
    assert torch.isfinite(out.mlm_logits).all()


def test_overrides_merge_into_sections() -> None:
    cfg = get_config("egovlpv2_base", video={"num_frames": 16}, heads={"embed_dim": 256, "projection": "linear"})
    assert cfg.video.num_frames == 16 and cfg.video.width == 768
    assert cfg.heads.embed_dim == 256


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"video": {"colour": 1}}, "unknown config key"),
        ({"fusion": {"num_layers": 13}}, "fusion.num_layers 13"),
        ({"video": {"img_size": 100}}, "not a multiple of patch_size"),
        ({"text": {"variant": "gpt2"}}, "valid: roberta, bert"),
        ({"video": {"width": 770}}, "video.width 770"),
    ],
)
def test_bad_configs_name_the_problem(overrides: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        get_config("egovlpv2_base", **overrides)


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="egovlpv2_base"):
        create_model("egovlpv2_huge")


def test_wrong_frame_count_is_a_clear_error(tiny) -> None:
    frames, _, _ = random_inputs(tiny)
    with pytest.raises(ValueError, match="num_frames"):
        tiny.encode_video(torch.cat([frames, frames], dim=1))


def test_edge_student_has_ten_times_fewer_macs_per_clip_than_the_teacher():
    """The student encodes a clip (video lower + upper, gates off) with at least 10x fewer MACs."""
    from egovlpv2_edge import create_model
    from egovlpv2_edge.model.stats import count_macs

    teacher = count_macs(create_model("egovlpv2_small"))["dual_clip"]
    student = count_macs(create_model("egovlpv2_edge"))["dual_clip"]
    assert teacher / student >= 10, (teacher, student)

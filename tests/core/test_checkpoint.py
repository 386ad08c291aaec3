"""Loading the released EgoVLPv2 checkpoint layout and this project's own checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from egovlpv2_edge import create_model
from egovlpv2_edge.checkpoint import (
    IGNORE,
    CheckpointError,
    load_checkpoint,
    load_official,
    map_official_key,
    resize_temporal_embed,
    save_checkpoint,
)

from .helpers import random_inputs, randomize_gates

TSV = Path(__file__).parents[1] / "data" / "egovlpv2_state_dict_keys.tsv"


def _official_entries() -> list[tuple[str, list[int], str]]:
    rows = []
    for line in TSV.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, [int(d) for d in shape.strip("[]").split(",")], dtype))
    return rows


def _official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under exactly the released key names and shapes (558 entries)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in _official_entries():
        if dtype == "int64":
            sd[key] = torch.arange(shape[-1]).expand(*shape).clone()
        else:
            sd[key] = torch.randn(*shape, generator=g) * 0.02
    return sd


def _official_for(model) -> dict[str, torch.Tensor]:
    """Official-layout tensors for a smaller preset: the released names that map onto its keys, its shapes."""
    ours = model.state_dict()
    sd = {}
    smallproj = ["txt_proj.1.weight", "txt_proj.1.bias", "vid_proj.0.weight", "vid_proj.0.bias"]  # reference Sec. 5
    # the released names with every layer index (a smaller preset fuses lower-numbered layers)
    patterns = {re.sub(r"\.(\d+)\.", ".{}.", k, count=1) for k, _, _ in _official_entries()}
    candidates = {p.format(i) for p in patterns for i in range(12)} | set(smallproj)
    for key in sorted(candidates):
        name = map_official_key(key)
        if name in ours:
            sd[key] = torch.randn_like(ours[name])
    return sd


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return _official_state_dict()


def test_released_layout_loads_with_nothing_missing_or_unexpected(official) -> None:
    assert len(official) == 558
    model = create_model("egovlpv2_base")
    ckpt = {"state_dict": {f"module.{k}": v for k, v in official.items()}, "epoch": 10}
    report = load_official(model, ckpt)
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == ["text_model.embeddings.position_ids"]
    assert len(report.loaded) == 557
    checks = {
        "video_model.blocks.7.attn.qkv_text_i2t.weight": model.video.blocks[7].attn.cross.kv.weight,
        "video_model.blocks.11.attn.alpha_i2t": model.video.blocks[11].attn.cross.gate,
        "video_model.blocks.3.timeattn.qkv.weight": model.video.blocks[3].time_attn.qkv.weight,
        "text_model.encoder.layer.9.alpha_t2i": model.text.layers[9].cross.gate,
        "text_model.encoder.layer.6.crossattention_t2i.self.key.weight": model.text.layers[6].cross.k.weight,
        "text_model.encoder.layer.0.output.LayerNorm.weight": model.text.layers[0].ffn_norm.weight,
        "cls_token": model.fusion_cls_token,
        "video_model.cls_token": model.video.cls_token,
        "norm.weight": model.fusion_norm.weight,
        "video_model.norm.weight": model.video.norm.weight,
        "itm_score.fc.weight": model.heads.vtm.weight,
        "mlm_score.decoder.weight": model.heads.mlm.decoder.weight,
        "mlm_score.bias": model.heads.mlm.bias,
        "cross_modal_video_pooler.dense.weight": model.heads.video_pooler.dense.weight,
        "txt_proj.4.weight": model.txt_proj[4].weight,
    }
    for key, param in checks.items():
        assert torch.equal(official[key], param.detach()), key


def test_smallproj_heads_load() -> None:
    model = create_model("egovlpv2_test", heads={"projection": "linear", "embed_dim": 16})
    sd = _official_for(model)
    assert "txt_proj.1.weight" in sd and "vid_proj.0.weight" in sd
    report = load_official(model, sd)
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(sd["txt_proj.1.weight"], model.txt_proj[1].weight.detach())


def test_checkpoint_file_is_detected_and_loaded(tmp_path) -> None:
    model = create_model("egovlpv2_test")
    sd = _official_for(model)
    path = tmp_path / "EgoVLPv2.pth"
    torch.save({"arch": "FrozenInTime", "epoch": 10, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    report = load_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == []
    again = create_model("egovlpv2_test", pretrained=str(path))
    frames, ids, mask = random_inputs(model)
    with torch.no_grad():
        assert torch.equal(model.encode_video(frames), again.encode_video(frames))


def test_temporal_embedding_is_interpolated_or_truncated(official) -> None:
    embed = official["video_model.temporal_embed"]  # (1, 4, 768)
    grown = resize_temporal_embed(embed, 16)
    assert grown.shape == (1, 16, 768)
    assert torch.allclose(grown[:, 0], embed[:, 0]) and torch.allclose(grown[:, -1], embed[:, -1])
    assert torch.allclose(grown[:, 5], embed[:, 1])  # 16 frames on 4 anchors: frame 5 sits on anchor 1
    assert torch.equal(resize_temporal_embed(embed, 2), embed[:, :2])
    model = create_model("egovlpv2_test", video={"num_frames": 4})
    sd = _official_for(create_model("egovlpv2_test"))  # 2-frame checkpoint into a 4-frame model
    report = load_official(model, sd)
    assert report.resized == ["video.temporal_embed"] and report.missing == []


def test_unmapped_and_misshaped_keys_fail_loudly() -> None:
    model = create_model("egovlpv2_test")
    sd = _official_for(model)
    with pytest.raises(CheckpointError, match="unexpected key.*video_model.blocks.0.attn.extra"):
        load_official(model, {**sd, "video_model.blocks.0.attn.extra": torch.zeros(1)})
    report = load_official(model, {**sd, "video_model.blocks.0.attn.extra": torch.zeros(1)}, strict=False)
    assert report.unexpected == ["video_model.blocks.0.attn.extra"]
    bad = dict(sd)
    bad["itm_score.fc.weight"] = torch.zeros(3, 96)
    with pytest.raises(CheckpointError, match=r"itm_score.fc.weight -> heads.vtm.weight: checkpoint \(3, 96\)"):
        load_official(model, bad)
    partial = {k: v for k, v in sd.items() if not k.startswith("mlm_score")}
    with pytest.raises(CheckpointError, match="missing key.*heads.mlm"):
        load_official(model, partial)


def test_key_map_is_pure_and_total_over_the_released_layout() -> None:
    for key, _, _ in _official_entries():
        name = map_official_key(key)
        assert name is not None, key
        assert name == IGNORE or "." in name or name == "fusion_cls_token"
    assert map_official_key("text_model.encoder.layer.3.alpha_t2i") == "text.layers.3.cross.gate"
    assert map_official_key("something_else.weight") is None


def test_own_checkpoint_round_trip(tiny, tmp_path) -> None:
    randomize_gates(tiny)
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(tiny, path, step=3)
    fresh = create_model("egovlpv2_test")
    report = load_checkpoint(fresh, path)
    assert report.missing == [] and report.unexpected == []
    assert all(torch.equal(a, b) for a, b in zip(tiny.gates(), fresh.gates(), strict=True))


def test_missing_or_foreign_files_are_clear_errors(tiny, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tiny, tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither an egovlpv2_edge checkpoint nor the released"):
        load_checkpoint(tiny, tmp_path / "other.pt")

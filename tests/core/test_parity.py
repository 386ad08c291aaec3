"""Numerical parity with the reference implementations the backbones follow (transformers, timm)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from egovlpv2_edge import create_model
from egovlpv2_edge.checkpoint import (
    load_hf_text,
    load_mapped,
    load_minilm,
    load_timm_vit,
    map_hf_text_key,
    minilm_path,
)

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def _text_batch(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = model.cfg.text
    ids = torch.randint(5, t.vocab_size, (3, t.max_length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = t.pad_id
    return ids, mask


def _ours(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model.text_upper_tokens(model.text_lower(ids, mask), mask)


def _hf_config(cls, model):
    t = model.cfg.text
    return cls(
        vocab_size=t.vocab_size,
        hidden_size=t.width,
        num_hidden_layers=t.depth,
        num_attention_heads=t.heads,
        intermediate_size=t.intermediate,
        max_position_embeddings=t.max_positions,
        type_vocab_size=t.type_vocab_size,
        pad_token_id=t.pad_id,
        layer_norm_eps=t.ln_eps,
    )


@pytest.mark.parametrize(
    ("preset", "hf_name"),
    [("egovlpv2_test", "Roberta"), ("egovlpv2_edge", "Bert"), ("egovlpv2_base", "Roberta")],
)
def test_text_encoder_equals_transformers(preset: str, hf_name: str, tmp_path) -> None:
    model = create_model(preset)
    cfg_cls = getattr(transformers, f"{hf_name}Config")
    hf = getattr(transformers, f"{hf_name}Model")(_hf_config(cfg_cls, model), add_pooling_layer=False).eval()
    if preset == "egovlpv2_base":  # 500 MB on disk: map the state dict directly
        report = load_mapped(
            model, hf.state_dict(), map_hf_text_key, expected_prefixes=("text.",), allow_missing=(r"\.cross\.",)
        )
    else:  # exercise the directory loader, not just the key map
        hf.save_pretrained(tmp_path)
        report = load_hf_text(model, tmp_path)
    assert report.missing == [] and report.unexpected == []
    ids, mask = _text_batch(model)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ref - _ours(model, ids, mask)).abs().max() < 1e-5


def test_real_minilm_weights_reproduce_bertmodel_on_real_sentences() -> None:
    model = create_model("egovlpv2_small")
    report = load_minilm(model)
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == 101
    path = str(minilm_path())
    hf = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    sentences = [
        "#C C picks up the red cup from the table",
        "take plate",
        "what did I put in the black dustbin?",
        "C opens the drawer and puts the knife inside before washing the green bowl",
    ]
    batch = tok(sentences, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
    ours = _ours(model, batch["input_ids"], batch["attention_mask"])
    # float32 over six real layers (hidden values up to ~10): 1e-5 absolute plus 1e-5 relative per element
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_hf_directory_with_another_architecture_is_rejected(tmp_path) -> None:
    model = create_model("egovlpv2_test")
    cfg = _hf_config(transformers.RobertaConfig, model)
    cfg.hidden_size, cfg.num_attention_heads = 64, 4
    transformers.RobertaModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="width: checkpoint 64 vs model 48"):
        load_hf_text(model, tmp_path)


@pytest.mark.parametrize(
    ("timm_kwargs", "overrides"),
    [
        (
            {"model_name": "vit_base_patch16_224"},
            {"video": {"num_frames": 1}},
        ),
        (
            {
                "model_name": "vit_tiny_patch16_224",
                "img_size": 32,
                "patch_size": 8,
                "embed_dim": 32,
                "depth": 2,
                "num_heads": 2,
            },
            {
                "video": {
                    "num_frames": 1,
                    "img_size": 32,
                    "patch_size": 8,
                    "width": 32,
                    "depth": 2,
                    "heads": 2,
                    "motion_stem": False,
                }
            },
        ),
    ],
    ids=["vit_base_patch16_224", "tiny_vit"],
)
def test_one_frame_video_encoder_equals_timm_vit(timm_kwargs: dict, overrides: dict) -> None:
    preset = "egovlpv2_base" if timm_kwargs["model_name"] == "vit_base_patch16_224" else "egovlpv2_test"
    model = create_model(preset, **overrides)
    vit = timm.create_model(
        **timm_kwargs, pretrained=False, num_classes=0, norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)
    ).eval()
    report = load_timm_vit(model, vit.state_dict())
    assert report.unexpected == [] and report.missing == []
    assert torch.count_nonzero(model.video.temporal_embed) == 0
    size = model.cfg.video.img_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = vit.forward_features(x)[:, 0]
        ours = model.video.features(model.video_upper_tokens(model.video_lower(x[:, None])))
    assert (ref - ours).abs().max() < 1e-5

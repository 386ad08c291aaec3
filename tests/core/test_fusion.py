"""Fusion in the backbone: gate semantics, the dual mode runs no cross-attention, split == one call."""

from __future__ import annotations

import pytest
import torch

from egovlpv2_edge import create_model
from egovlpv2_edge.model.layers import additive_mask

from .helpers import random_inputs, randomize_gates


def _per_layer(model, v, t, mask, fused: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Outputs of every top layer pair, fused (each side reads the other's layer input) or not."""
    add = additive_mask(mask, t.dtype)
    F_ = model.cfg.video.num_frames
    blocks = model.video.blocks[model.video.first_fused :]
    layers = model.text.layers[model.text.first_fused :]
    outs = []
    for block, layer in zip(blocks, layers, strict=True):
        if fused:
            v, t = block(v, F_, t, add), layer(t, add, v)
        else:
            v, t = block(v, F_), layer(t, add)
        outs.append((v, t))
    return outs


@pytest.mark.parametrize("name", ["egovlpv2_test", "egovlpv2_edge"])
def test_zero_gates_make_fused_layers_equal_unfused_exactly(name: str) -> None:
    model = create_model(name, fusion={"gate_init": 0.0})
    frames, ids, mask = random_inputs(model)
    with torch.no_grad():
        v0, t0 = model.video_lower(frames), model.text_lower(ids, mask)
        fused = _per_layer(model, v0, t0, mask, fused=True)
        plain = _per_layer(model, v0, t0, mask, fused=False)
        fv, ft = model.fuse_upper(v0, t0, mask)
    assert all(g.item() == 0.0 for g in model.gates())
    for (fv_i, ft_i), (pv_i, pt_i) in zip(fused, plain, strict=True):
        assert torch.equal(fv_i, pv_i) and torch.equal(ft_i, pt_i)
    assert torch.equal(fv, model.video_upper_tokens(v0)) and torch.equal(ft, model.text_upper_tokens(t0, mask))


@pytest.mark.parametrize("name", ["egovlpv2_test", "egovlpv2_small", "egovlpv2_edge", "egovlpv2_base"])
def test_gates_start_at_the_configured_value(name: str) -> None:
    from egovlpv2_edge.config import get_config

    cfg = get_config(name)
    expected = 0.0 if name in ("egovlpv2_test", "egovlpv2_base") else 0.5  # the paper's 0; CPU presets open
    assert cfg.fusion.gate_init == expected
    if name != "egovlpv2_base":  # the base model is too large to build in a unit test; its config is checked
        assert all(g.item() == expected for g in create_model(name).gates())
    with pytest.raises(ValueError, match="gate_init"):
        get_config(name, fusion={"gate_init": float("nan")})


def test_nonzero_gates_change_every_fused_layer(tiny) -> None:
    randomize_gates(tiny)
    frames, ids, mask = random_inputs(tiny)
    with torch.no_grad():
        v0, t0 = tiny.video_lower(frames), tiny.text_lower(ids, mask)
        fused = _per_layer(tiny, v0, t0, mask, fused=True)
        plain = _per_layer(tiny, v0, t0, mask, fused=False)
    for (fv_i, ft_i), (pv_i, pt_i) in zip(fused, plain, strict=True):
        assert (fv_i - pv_i).abs().max() > 1e-4 and (ft_i - pt_i).abs().max() > 1e-4


def test_each_direction_has_its_own_gate(tiny) -> None:
    frames, ids, mask = random_inputs(tiny)
    M = tiny.cfg.fusion.num_layers
    with torch.no_grad():
        tiny.gates()[0].fill_(1.0)  # video side only
        v0, t0 = tiny.video_lower(frames), tiny.text_lower(ids, mask)
        ((v1, t1),) = _per_layer(tiny, v0, t0, mask, fused=True)[:1]
        ((pv, pt),) = _per_layer(tiny, v0, t0, mask, fused=False)[:1]
    assert M == 1
    assert not torch.equal(v1, pv) and torch.equal(t1, pt)


def test_dual_mode_runs_no_cross_attention_and_fused_mode_runs_all(tiny) -> None:
    randomize_gates(tiny)
    calls: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out, i=i: calls.append(i))
        for i, m in enumerate(tiny.cross_attention_modules())
    ]
    frames, ids, mask = random_inputs(tiny)
    with torch.no_grad():
        tiny.encode_video(frames)
        tiny.encode_text(ids, mask)
        assert calls == []
        tiny.forward_fusion(frames, ids, mask)
    for h in hooks:
        h.remove()
    assert sorted(calls) == list(range(2 * tiny.cfg.fusion.num_layers))


@pytest.mark.parametrize("name", ["egovlpv2_test", "egovlpv2_small"])
def test_lower_then_upper_equals_one_call(name: str) -> None:
    model = create_model(name)
    randomize_gates(model)
    frames, ids, mask = random_inputs(model)
    with torch.no_grad():
        v_tokens = model.video_lower(frames)
        t_tokens = model.text_lower(ids, mask)
        assert torch.equal(model.video_upper(v_tokens, motion=model.video_motion(frames)), model.encode_video(frames))
        assert torch.equal(model.text_upper(t_tokens, mask), model.encode_text(ids, mask))
        one = model.forward_fusion(frames, ids, mask, mlm=True)
        fv, ft = model.fuse_upper(model.video_lower(frames, "fusion"), t_tokens, mask)
        split = model.fusion_heads(fv, ft, mlm=True)
    assert torch.equal(one.vtm_logits, split.vtm_logits)
    assert torch.equal(one.mlm_logits, split.mlm_logits)
    assert torch.equal(one.video_cls, split.video_cls)


def test_separate_fusion_cls_changes_the_fused_stream_and_shared_cls_reuses_dual_tokens() -> None:
    separate = create_model("egovlpv2_test")
    with torch.no_grad():
        separate.fusion_cls_token.normal_()
    frames, _, _ = random_inputs(separate)
    with torch.no_grad():
        assert not torch.equal(separate.video_lower(frames, "dual"), separate.video_lower(frames, "fusion"))
    shared = create_model("egovlpv2_test", fusion={"separate_cls": False})
    assert shared.fusion_cls_token is None
    with torch.no_grad():
        assert torch.equal(shared.video_lower(frames, "dual"), shared.video_lower(frames, "fusion"))


def test_ids_under_padding_change_nothing(tiny) -> None:
    randomize_gates(tiny)
    frames, ids, mask = random_inputs(tiny)
    ids2 = ids.clone()
    ids2[1, mask[1] == 0] = 7  # other (non-pad) ids where the mask is 0
    with torch.no_grad():
        a, b = tiny.forward_fusion(frames, ids, mask), tiny.forward_fusion(frames, ids2, mask)
        ta, tb = tiny.encode_text(ids, mask), tiny.encode_text(ids2, mask)
    assert torch.allclose(a.vtm_logits[1], b.vtm_logits[1], atol=1e-6)
    assert torch.allclose(a.video_cls[1], b.video_cls[1], atol=1e-6)
    assert torch.allclose(ta[1], tb[1], atol=1e-6)


def test_time_attention_starts_as_identity_and_temporal_branch_learns() -> None:
    tiny = create_model("egovlpv2_test", video={"time_init": "reference"})
    frames, _, _ = random_inputs(tiny)
    block = tiny.video.blocks[0]
    x = tiny.video.embed(frames, tiny.video.cls_token)
    with torch.no_grad():
        assert torch.equal(block.time_attn(block.norm3(x), tiny.cfg.video.num_frames), torch.zeros_like(x))
    assert torch.all(block.time_attn.proj.weight == 1.0)


def _time_grads(model) -> tuple[float, float]:
    """Largest |grad| of the time-attention weights and of the space-attention qkv after one backward."""
    frames, _, _ = random_inputs(model)
    model.encode_video(frames).pow(2).sum().backward()
    time = max(b.time_attn.qkv.weight.grad.abs().max().item() for b in model.video.blocks)
    time = max(time, max(b.time_attn.proj.weight.grad.abs().max().item() for b in model.video.blocks))
    space = max(b.attn.qkv.weight.grad.abs().max().item() for b in model.video.blocks)
    return time, space


def test_reference_time_init_gets_no_gradient_and_zero_proj_init_does() -> None:
    torch.manual_seed(0)
    ref = create_model("egovlpv2_test", video={"time_init": "reference"})
    time, space = _time_grads(ref)
    assert time < 1e-5 * space  # the LayerNorm after the branch cancels its constant output: dead from scratch
    torch.manual_seed(0)
    zp = create_model("egovlpv2_test", video={"time_init": "zero_proj"})
    frames, _, _ = random_inputs(zp)
    block = zp.video.blocks[0]
    with torch.no_grad():
        x = zp.video.embed(frames, zp.video.cls_token)
        assert torch.equal(block.time_attn(block.norm3(x), zp.cfg.video.num_frames), torch.zeros_like(x))
    time, space = _time_grads(zp)
    assert time > 1e-2 * space


def test_motion_stem_sees_frame_differences() -> None:
    torch.manual_seed(0)
    model = create_model("egovlpv2_test", video={"motion_stem": True})
    assert model.video.patch_embed.in_channels == 6
    frames, _, _ = random_inputs(model)
    x = model.video.embed(frames, model.video.cls_token)
    F_, N = model.cfg.video.num_frames, model.cfg.video.num_patches
    # the first frame is its own predecessor (zero difference)
    with torch.no_grad():
        w, bias, p = model.video.patch_embed.weight, model.video.patch_embed.bias, model.cfg.video.patch_size
        direct = torch.nn.functional.conv2d(
            torch.cat([frames[:, 0], torch.zeros_like(frames[:, 0])], 1), w, bias, stride=p
        )
        first = x[:, 1 : 1 + N] - model.video.pos_embed[:, 1:] - model.video.temporal_embed[:, :1]
    assert torch.allclose(first, direct.flatten(2).transpose(1, 2), atol=1e-5)
    # a later frame's tokens depend on the frame before it (they would not with the plain stem)
    changed = frames.clone()
    changed[:, 0] += 1.0
    y = model.video.embed(changed, model.video.cls_token)
    assert F_ == 2 and not torch.allclose(x[:, 1 + N :], y[:, 1 + N :], atol=1e-3)
    plain = create_model("egovlpv2_test", video={"motion_stem": False})
    xp, yp = (plain.video.embed(f, plain.video.cls_token) for f in (frames, changed))
    assert torch.equal(xp[:, 1 + N :], yp[:, 1 + N :])


def test_motion_branch_joins_the_dual_embedding_only() -> None:
    torch.manual_seed(0)
    model = create_model("egovlpv2_test", video={"motion_branch": 4})
    frames, _, _ = random_inputs(model)
    branch = model.video.motion
    plain = create_model("egovlpv2_test", video={"motion_branch": 0})
    assert plain.video.motion is None and plain.motion_proj is None and plain.video_motion(frames) is None
    assert set(plain.load_state_dict(model.state_dict(), strict=False).unexpected_keys) == {
        k for k in model.state_dict() if k.startswith(("video.motion.", "motion_proj."))
    }
    with torch.no_grad():
        # the projection starts at zero: the same weights without the branch give the same embedding
        assert model.motion_proj.weight.abs().sum() == 0
        e0 = model.encode_video(frames)
        assert torch.equal(e0, plain.encode_video(frames))
        torch.nn.init.normal_(model.motion_proj.weight)
        # the tokens (dual and fused streams) do not see it: it joins the dual embedding after the projection
        for stream in ("dual", "fusion"):
            assert torch.equal(model.video_lower(frames, stream), plain.video_lower(frames, stream))
        motion = model.video_motion(frames)
        assert motion.shape == e0.shape
        assert torch.allclose(model.encode_video(frames), e0 + motion, atol=1e-6)
        assert not torch.allclose(motion, torch.zeros_like(motion), atol=1e-3)
        tokens = model.video_lower(frames)
        assert torch.equal(model.video_upper(tokens, motion=motion), model.encode_video(frames))
        # every convolution spans two frames (a 2-frame clip repeats its last one), so their order matters
        assert [branch.convs[i].kernel_size[0] for i in (0, 3, 6)] == [2, 2, 2] and frames.shape[1] == 2
        assert not torch.allclose(branch(frames), branch(frames.flip(1)), atol=1e-4)
        padded = torch.cat([frames, frames[:, 1:], frames[:, 1:]], dim=1)
        assert torch.allclose(branch(frames), branch(padded), atol=1e-6)
        assert branch.direction_logits(frames).shape == (frames.shape[0],)
    # leaving out the branch's share is an error, not a silently different embedding
    with pytest.raises(ValueError, match="pass motion=model.video_motion"):
        model.video_upper(tokens)
    with pytest.raises(ValueError, match="without a motion branch"):
        plain.video_upper(tokens, motion=motion)
    # the weights do not depend on the frame count
    longer = create_model("egovlpv2_test", video={"motion_branch": 4, "num_frames": 8})
    assert all(t.shape == longer.video.motion.state_dict()[k].shape for k, t in branch.state_dict().items())
    # from zero, the projection gets a gradient at once (and the convolutions once it has moved)
    fresh = create_model("egovlpv2_test", video={"motion_branch": 4}).train()
    fresh.encode_video(frames).pow(2).sum().backward()
    assert fresh.motion_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="motion_branch -1 must be >= 0"):
        create_model("egovlpv2_test", video={"motion_branch": -1})


def test_gradients_reach_gates_in_fused_mode(tiny) -> None:
    frames, ids, mask = random_inputs(tiny)
    tiny.train()
    out = tiny.forward_fusion(frames, ids, mask, mlm=True)
    (out.vtm_logits.sum() + out.mlm_logits.mean()).backward()
    assert all(g.grad is not None and g.grad.abs().item() > 0 for g in tiny.gates())


def test_gradient_checkpointing_gives_the_same_gradients(tiny) -> None:
    frames, ids, mask = random_inputs(tiny)

    def grads(ckpt: bool) -> list[torch.Tensor]:
        tiny.zero_grad()
        tiny.set_grad_checkpointing(ckpt)
        v, t = tiny(frames, ids, mask)
        (v.sum() + t.sum()).backward()
        return [p.grad.clone() for p in tiny.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_dense_and_grouped_divided_attention_agree() -> None:
    grouped = create_model("egovlpv2_test", video={"dense_attention_max_tokens": 0})
    dense = create_model("egovlpv2_test")
    with torch.no_grad():  # make the time branch and the temporal embedding non-trivial, so both masks matter
        grouped.video.temporal_embed.normal_()
        for block in grouped.video.blocks:
            block.time_attn.qkv.weight.normal_(std=0.2)
            block.time_attn.proj.weight.normal_(std=0.2)
    dense.load_state_dict(grouped.state_dict())
    frames, ids, mask = random_inputs(grouped)
    with torch.no_grad():
        a, b = grouped.encode_video(frames), dense.encode_video(frames)
        fa = grouped.forward_fusion(frames, ids, mask).vtm_logits
        fb = dense.forward_fusion(frames, ids, mask).vtm_logits
    assert (a - b).abs().max() < 1e-5 * a.abs().max() and (fa - fb).abs().max() < 1e-5
    with torch.no_grad():
        flipped = grouped.encode_video(frames.flip(1))
    assert (a - flipped).abs().max() > 1e-2 * a.abs().max()  # frame order matters now


def test_mean_pooling_ignores_padding_and_differs_from_first_token() -> None:
    first = create_model("egovlpv2_test")
    mean = create_model("egovlpv2_test", text={"pooling": "mean"})
    mean.load_state_dict(first.state_dict())
    _, ids, mask = random_inputs(first)
    ids2 = ids.clone()
    ids2[1, mask[1] == 0] = 7
    with torch.no_grad():
        a, b = mean.encode_text(ids, mask), mean.encode_text(ids2, mask)
        h = mean.text_upper_tokens(mean.text_lower(ids, mask), mask)
        want = mean.txt_proj(h[1, mask[1] == 1].mean(0, keepdim=True))
    assert torch.allclose(a[1], b[1], atol=1e-6)
    assert torch.allclose(a[1:2], want, atol=1e-6)
    assert not torch.allclose(a, first.encode_text(ids, mask).detach())


def test_standardized_poolers_read_each_channel_standardized() -> None:
    model = create_model("egovlpv2_test")
    heads = model.heads
    gen = torch.Generator().manual_seed(0)
    width = heads.text_pooler.dense.in_features
    tokens = 3.0 + 0.01 * torch.randn(16, 4, width, generator=gen)  # a large shared offset, little variation
    video_cls = -2.0 + 0.05 * torch.randn(16, model.cfg.video.width, generator=gen)
    inputs = heads.vtm_pooler_inputs(video_cls, tokens)  # what the poolers read
    before = [torch.nn.Linear(width, width) for _ in range(2)]
    for copy, pooler in zip(before, (heads.text_pooler, heads.video_pooler), strict=True):
        copy.load_state_dict(pooler.dense.state_dict())
    summed: list[torch.Tensor] = []
    heads.standardize_poolers(video_cls, tokens, reduce=lambda t: summed.append(t) or t)
    assert len(summed) == 2  # the statistics go through the cross-process sum
    for x, copy, pooler in zip(inputs, before, (heads.text_pooler, heads.video_pooler), strict=True):
        z = (x - x.mean(0)) / x.std(0, unbiased=False)
        torch.testing.assert_close(pooler.dense(x), copy(z), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no VTM head"):
        create_model("egovlpv2_test", heads={"vtm": False}).heads.standardize_poolers(video_cls, tokens)

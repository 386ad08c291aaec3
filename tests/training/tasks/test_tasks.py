"""Task modules on the tiny preset: shapes, hand-worked losses and decoding, losses that fall on an overfit batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egovlpv2_edge import create_model
from egovlpv2_edge.training.tasks.heads import QAHead, SpanHead, build_head, fit_qa_head
from egovlpv2_edge.training.tasks.nlq import decode_spans, fixed_window_baseline, span_loss, span_targets
from egovlpv2_edge.training.tasks.qa import QATask, dual_features, fusion_stream_from_dual
from egovlpv2_edge.training.tasks.retrieval import RetrievalTask, multi_instance_margin_loss, relevancy_from_tags


def _model() -> torch.nn.Module:
    return create_model("egovlpv2_test").train()


def _batch(B: int = 4, L: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    video = torch.randn(B, 2, 3, 32, 32)  # (B, F, 3, H, W) of the test preset
    ids = torch.randint(5, 500, (B, L))
    ids[:, 0] = 0
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 5:] = 0
    return video, ids, mask


def _fit(module: torch.nn.Module, loss_fn, steps: int = 30, lr: float = 3e-3) -> tuple[float, float]:  # noqa: ANN001
    """Train on one fixed batch; returns the first loss and the mean of the last five."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history[0], float(np.mean(history[-5:]))


def test_qa_head_shape_and_rebuild() -> None:
    head = QAHead(32, 7)
    assert head(torch.randn(3, 32)).shape == (3, 7)
    again = build_head(head.config())
    again.load_state_dict(head.state_dict())
    assert isinstance(again, QAHead) and again.num_answers == 7
    with pytest.raises(ValueError, match="unknown head kind"):
        build_head({"kind": "mystery"})


def test_fit_qa_head_reads_raw_features_with_a_large_common_offset() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=gen)
    x = 50.0 + 0.02 * torch.randn(300, 8, generator=gen)  # the answer moves dimension 2 by 0.1 beside a 50 offset
    x[:, 2] += 0.1 * y
    torch.manual_seed(0)
    head = QAHead(8, 3, dropout=0.0)
    loss = fit_qa_head(head, x, y, epochs=100)
    with torch.no_grad():
        acc = float((head(x).argmax(-1) == y).float().mean())  # raw features: the standardisation is folded in
    assert loss < 0.8 and acc > 0.9, (loss, acc)  # chance: loss ln 3 = 1.10, accuracy 1/3


def test_qa_task_fusion_and_dual_shapes() -> None:
    model = _model()
    video, ids, mask = _batch()
    fused = QATask(model, [f"a{i}" for i in range(6)], "fusion")
    assert fused.features(video, ids, mask).shape == (4, model.cfg.video.width)
    assert fused.logits(video, ids, mask).shape == (4, 6)
    dual = QATask(model, [f"a{i}" for i in range(6)], "dual")
    assert dual_features(model, video, ids, mask).shape == (4, model.cfg.video.width + model.cfg.text.width)
    assert dual.logits(video, ids, mask).shape == (4, 6)
    with pytest.raises(ValueError, match="valid: fusion, dual"):
        QATask(model, ["a", "b"], "late")  # type: ignore[arg-type]


def test_qa_loss_falls_on_an_overfit_batch() -> None:
    task = QATask(_model(), [f"a{i}" for i in range(16)], "fusion", dropout=0.0)
    video, ids, mask = _batch()
    answer = torch.tensor([0, 3, 5, 1])
    mc_ids = torch.cat([ids, ids.flip(0)])  # "question + right choice" rows, then "question + wrong choice" rows
    mc_mask = torch.cat([mask, mask.flip(0)])
    _, logs0 = task(video, ids, mask, answer, mc_ids, mc_mask)
    first, last = _fit(task, lambda: task(video, ids, mask, answer, mc_ids, mc_mask)[0], steps=20)
    _, logs = task(video, ids, mask, answer, mc_ids, mc_mask)
    assert set(logs) == {"qa", "mc", "acc", "loss"}
    assert last < first and float(logs["qa"]) < 0.6 * float(logs0["qa"])


def test_margin_loss_by_hand() -> None:
    sim = torch.tensor([[0.5, 0.4], [0.0, 0.9]])
    # texts->clips: anchor 0 violates by 0.2 - (0.5 - 0.4) = 0.1, the other three pairs keep the margin
    assert float(multi_instance_margin_loss(sim, torch.eye(2), 0.2)) == pytest.approx(0.1 / 4)
    # an equally relevant other item is another instance of the action: not pushed away
    assert float(multi_instance_margin_loss(sim, torch.ones(2, 2), 0.2)) == 0.0
    verb = torch.tensor([[1, 0], [1, 0]])
    noun = torch.tensor([[1, 1], [1, 0]])
    assert torch.allclose(relevancy_from_tags(verb, noun), torch.tensor([[1.0, 0.75], [0.75, 1.0]]))


def test_retrieval_loss_falls_on_an_overfit_batch() -> None:
    task = RetrievalTask(_model(), margin=0.2)
    video, ids, mask = _batch()
    verb = torch.eye(4, dtype=torch.long)
    noun = torch.eye(4, dtype=torch.long)
    first, last = _fit(task, lambda: task(video, ids, mask, verb, noun)[0])
    assert first > 0 and last < 0.6 * first


def test_span_head_shapes_targets_and_overfit() -> None:
    head = SpanHead(32, hidden=32, layers=1, heads=2)
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    start, end = head(x, mask)
    assert start.shape == end.shape == (2, 10) and bool((start[1, 7:] < -1e3).all())
    s, e = torch.tensor([2, 5]), torch.tensor([3, 6])
    first, last = _fit(head, lambda: span_loss(*head(x, mask), s, e), steps=40)
    assert last < 0.3 * first
    assert span_targets((4.5, 7.9), 5, 2.0) == (2, 3)
    assert span_targets((4.0, 8.0), 5, 2.0) == (2, 3)
    assert span_targets((9.5, 9.5), 5, 2.0) == (4, 4)


def _grounding_batch(gen: torch.Generator, B: int = 64, N: int = 12, L: int = 6) -> dict[str, torch.Tensor]:
    """Queries whose target window is only known from the query: each window carries a random key in its
    features, the query's first token repeats the target window's key, and the similarity peaks there."""
    keys = torch.randn(B, N, 16, generator=gen)
    target = torch.randint(0, N, (B,), generator=gen)
    text = torch.randn(B, L, 16, generator=gen) * 0.1
    text[:, 0] = keys[torch.arange(B), target]
    sim = torch.randn(B, N, generator=gen) * 0.1
    sim[torch.arange(B), target] += 1.0
    return {"x": keys, "mask": torch.ones(B, N, dtype=torch.bool), "text": text,
            "text_mask": torch.ones(B, L, dtype=torch.bool), "sim": sim, "target": target}  # fmt: skip


@pytest.mark.parametrize("reads", ["text", "sim"])
def test_span_head_finds_the_window_only_the_query_names(reads: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    kwargs = {"text_dim": 16} if reads == "text" else {"use_sim": True}
    heads = {"query": SpanHead(16, 32, 1, 2, 0.0, **kwargs), "features alone": SpanHead(16, 32, 1, 2, 0.0)}
    acc = {}
    for name, head in heads.items():
        opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
        for _ in range(150):
            b = _grounding_batch(gen)
            extra = (b["text"], b["text_mask"], b["sim"]) if name == "query" else ()
            start, end = head(b["x"], b["mask"], *extra)
            loss = span_loss(start, end, b["target"], b["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        b = _grounding_batch(torch.Generator().manual_seed(99), B=256)
        extra = (b["text"], b["text_mask"], b["sim"]) if name == "query" else ()
        with torch.no_grad():
            start, _ = head(b["x"], b["mask"], *extra)
        acc[name] = float((start.argmax(-1) == b["target"]).float().mean())
    assert acc["query"] > 0.8 and acc["features alone"] < 0.25, acc  # chance is 1/12
    with pytest.raises(ValueError, match="reads the"):
        heads["query"](b["x"], b["mask"])
    rebuilt = build_head(heads["query"].config())
    assert rebuilt.args == heads["query"].args


def test_span_head_with_a_similarity_prior_starts_as_the_similarity_ranking() -> None:
    torch.manual_seed(0)
    head = SpanHead(8, 16, 1, 2, 0.0, use_sim=True, sim_prior=3.0).eval()
    sim = torch.tensor([[0.1, 0.4, 0.1, 0.0], [0.2, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    start, end = head(torch.randn(2, 4, 8), mask, sim=sim)
    # first query: mean 0.15, std sqrt(0.0225) = 0.15, so z = (-1/3, 5/3, -1/3, -1); second over its 3 windows:
    # mean 1/15, std sqrt(2/225) = 0.0943, z = (sqrt(2), -sqrt(2)/2, -sqrt(2)/2)
    want = torch.tensor([[-1.0, 5.0, -1.0, -3.0], [3 * 2**0.5, -1.5 * 2**0.5, -1.5 * 2**0.5, -1e4]])
    torch.testing.assert_close(start, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(end, want, atol=1e-4, rtol=1e-4)
    assert build_head(head.config()).args["sim_prior"] == 3.0
    with pytest.raises(ValueError, match="needs use_sim"):
        SpanHead(8, 16, sim_prior=3.0)


def test_span_head_without_window_features_reads_positions_and_similarity() -> None:
    torch.manual_seed(0)
    head = SpanHead(0, 16, 1, 2, 0.0, use_sim=True, sim_prior=3.0)
    assert head.proj is None and build_head(head.config()).args["in_dim"] == 0
    sim = torch.tensor([[0.1, 0.4, 0.1, 0.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    start, end = head.eval()(torch.zeros(1, 4, 0), mask, sim=sim)  # untrained: the similarity ranking
    torch.testing.assert_close(start, torch.tensor([[-1.0, 5.0, -1.0, -3.0]]), atol=1e-4, rtol=1e-4)
    # trained, it learns where spans start and end from positions alone: targets always at windows 1 and 2,
    # whatever the similarity says
    head.train()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(200):
        sim = torch.randn(32, 6, generator=gen)
        start, end = head(torch.zeros(32, 6, 0), torch.ones(32, 6, dtype=torch.bool), sim=sim)
        loss = span_loss(start, end, torch.full((32,), 1), torch.full((32,), 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        start, end = head.eval()(torch.zeros(64, 6, 0), torch.ones(64, 6, dtype=torch.bool), sim=torch.randn(64, 6))
    hits = float((start.argmax(-1) == 1).float().mean()), float((end.argmax(-1) == 2).float().mean())
    assert min(hits) > 0.9, hits


def test_fusion_stream_from_dual_gives_the_fused_pass_the_dual_clip_tokens() -> None:
    model = create_model("egovlpv2_test").eval()
    with torch.no_grad():
        model.fusion_cls_token.normal_()
    video = torch.randn(2, 2, 3, 32, 32)
    assert not torch.allclose(model.video_lower(video, "fusion"), model.video_lower(video, "dual"))
    fusion_stream_from_dual(model)
    torch.testing.assert_close(model.video_lower(video, "fusion"), model.video_lower(video, "dual"))
    torch.testing.assert_close(model.fusion_norm.weight, model.video.norm.weight)
    torch.testing.assert_close(model.fusion_norm.bias, model.video.norm.bias)


def test_video_cross_scale_multiplies_what_the_question_adds_to_the_fused_video_cls() -> None:
    from egovlpv2_edge.training.tasks.qa import scale_video_cross_attention

    model = create_model("egovlpv2_test").eval()
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(1, 2, 3, 32, 32, generator=gen)
    ids, mask = torch.randint(5, 40, (2, 8), generator=gen), torch.ones(2, 8, dtype=torch.long)

    def cross_outputs() -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        hooks = [b.attn.cross.register_forward_hook(lambda m, i, o: outs.append(o - i[0]))
                 for b in model.video.blocks if b.attn.cross is not None]  # fmt: skip
        with torch.no_grad():
            tokens = model.video_lower(video.expand(2, -1, -1, -1, -1), "fusion")
            model.fuse_upper(tokens, model.text_lower(ids, mask), mask)
        for h in hooks:
            h.remove()
        return outs

    before, dual = cross_outputs()[0], model.encode_video(video)
    text_side = [layer.cross.out.weight.clone() for layer in model.text.layers if layer.cross is not None]
    scale_video_cross_attention(model, 3.0)
    torch.testing.assert_close(cross_outputs()[0], 3.0 * before)  # the first fused block's branch, same input
    torch.testing.assert_close(model.encode_video(video), dual)  # dual mode runs no cross-attention
    after = [layer.cross.out.weight for layer in model.text.layers if layer.cross is not None]
    assert all(torch.equal(a, b) for a, b in zip(text_side, after, strict=True))


def test_decode_spans_and_fixed_windows_by_hand() -> None:
    start = torch.full((5,), -10.0)
    end = torch.full((5,), -10.0)
    start[2], end[3] = 10.0, 10.0
    spans = decode_spans(start, end, window_s=2.0, duration=9.0, k=3)
    assert spans[0].tolist() == [4.0, 8.0] and len(spans) == 3
    # the top spans do not overlap by more than the NMS threshold
    assert spans[1].tolist() != spans[0].tolist()
    base = fixed_window_baseline(10.0, 2.0, k=3)
    assert np.allclose(base, [[4.0, 6.0], [2 / 3, 8 / 3], [22 / 3, 28 / 3]])


def test_warm_start_subset_caps_the_questions_a_head_warm_start_reads() -> None:
    from egovlpv2_edge.training.tasks._setup import warm_start_subset

    data = list(range(50))
    assert warm_start_subset(data, seed=0, limit=50) is data
    a, b = warm_start_subset(data, seed=0, limit=20), warm_start_subset(data, seed=0, limit=20)
    picked = [a[i] for i in range(len(a))]
    assert len(picked) == 20 == len(set(picked)) and picked == sorted(picked)
    assert picked == [b[i] for i in range(len(b))]  # seeded
    other = warm_start_subset(data, seed=1, limit=20)
    assert picked != [other[i] for i in range(len(other))]

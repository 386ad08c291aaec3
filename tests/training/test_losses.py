"""Each pre-training loss against a small hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from egovlpv2_edge.training.losses import (
    direction_loss,
    egonce_loss,
    margin_loss,
    mlm_loss_sum,
    mlm_mask,
    positive_mask,
    reverse_pair_loss,
    vtm_loss,
    vtm_plan,
)


def test_infonce_two_items_by_hand() -> None:
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # each direction, each row: -log(e / (e + 1)); summed over both directions
    expected = 2 * (math.log(1 + math.e) - 1)
    assert egonce_loss(sim, None, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_egonce_action_aware_positives_by_hand() -> None:
    verbs = torch.tensor([[1, 0], [1, 0], [0, 1]])
    nouns = torch.tensor([[0, 1], [0, 1], [0, 1]])
    pos = positive_mask(verbs, nouns)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    sim = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 0.0], [0.2, 0.1, 0.9]])
    t = 0.5
    e = [[math.exp(s / t) for s in row] for row in sim.tolist()]
    col = [[e[i][j] for i in range(3)] for j in range(3)]  # rows of S^T
    t2v = [
        math.log((e[0][0] + e[0][1]) / sum(e[0])),
        math.log((e[1][0] + e[1][1]) / sum(e[1])),
        math.log(e[2][2] / sum(e[2])),
    ]
    v2t = [
        math.log((col[0][0] + col[0][1]) / sum(col[0])),
        math.log((col[1][0] + col[1][1]) / sum(col[1])),
        math.log(col[2][2] / sum(col[2])),
    ]
    expected = -(sum(t2v) / 3 + sum(v2t) / 3)
    assert egonce_loss(sim, pos, temperature=t).item() == pytest.approx(expected, rel=1e-6)
    # shared verb alone (no shared noun) is not a positive
    verbs2 = torch.tensor([[1, 0], [1, 0]])
    nouns2 = torch.tensor([[1, 0], [0, 1]])
    assert positive_mask(verbs2, nouns2).tolist() == [[True, False], [False, True]]


def test_egonce_is_zero_when_every_pair_is_positive_and_grads_flow() -> None:
    sim = torch.randn(4, 4, requires_grad=True)
    assert egonce_loss(sim, torch.ones(4, 4, dtype=torch.bool), 0.05).abs().item() < 1e-6
    egonce_loss(sim, None, 0.05).backward()
    assert sim.grad is not None and sim.grad.abs().sum() > 0


def test_vtm_plan_excludes_every_positive_and_is_seeded() -> None:
    N = 8
    verbs = torch.eye(4).repeat(2, 1)  # items i and i+4 share a verb
    nouns = torch.eye(4).repeat(2, 1)  # ... and a noun: they are positives
    pos = positive_mask(verbs, nouns)
    sim = torch.randn(N, N)
    plan = vtm_plan(sim, pos, 0.05, torch.Generator().manual_seed(3))
    assert int(plan.labels.sum()) == N // 2
    for i in range(N):
        t, v = int(plan.text_index[i]), int(plan.video_index[i])
        if plan.labels[i] == 1:
            assert t == v == i
        else:
            assert (t == i) != (v == i)  # exactly one side kept
            assert not pos[t, v], "a hard negative must not be an EgoNCE positive"
    again = vtm_plan(sim, pos, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(plan.video_index, again.video_index) and torch.equal(plan.text_index, again.text_index)


def test_vtm_plan_prefers_hard_negatives() -> None:
    N = 4
    sim = torch.zeros(N, N)
    sim[0, 2] = 0.9  # text 0 is very similar to video 2
    hits = 0
    for seed in range(50):
        plan = vtm_plan(sim, None, 0.05, torch.Generator().manual_seed(seed))
        if plan.labels[0] == 0 and plan.text_index[0] == 0:
            hits += int(plan.video_index[0] == 2)
    assert hits > 10  # softmax(0.9 / 0.05) puts almost all weight on video 2


def test_margin_loss_by_hand() -> None:
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fwd = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    bwd = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # margins (1 - 0) / 0.5 = 2 and (0.8 - 1) / 0.5 = -0.4; -log sigmoid(x) = log(1 + e^-x)
    want = math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(0.4))
    assert margin_loss(t, fwd, bwd, 0.5).item() == pytest.approx(want, rel=1e-6)
    # a clip that looks the same backwards gives log 2 per item, whatever the text
    assert margin_loss(t, fwd, fwd, 0.5).item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_reverse_pair_loss_by_hand() -> None:
    e = torch.eye(3)
    clip, back, text, rev = e[[0]], e[[1]], e[[0]], (e[[0]] + e[[2]]) / math.sqrt(2)
    s = 1 / math.sqrt(2)
    # at tau 1: clip picks text over rev (1 - s), back picks rev over text (0 - 0), text picks clip over back (1 - 0),
    # rev picks back over clip (0 - s)
    want = sum(math.log(1 + math.exp(-x)) for x in (1 - s, 0.0, 1.0, -s)) / 4
    assert reverse_pair_loss(clip, back, text, rev, 1.0).item() == pytest.approx(want, rel=1e-6)
    # a clip that looks the same backwards, with a reverse narration equal to its own: log 2, nothing to learn
    assert reverse_pair_loss(clip, clip, text, text, 0.05).item() == pytest.approx(math.log(2), rel=1e-6)
    # two items sum
    two = reverse_pair_loss(torch.cat([clip, clip]), torch.cat([back, back]), torch.cat([text, text]),
                            torch.cat([rev, rev]), 1.0)  # fmt: skip
    assert two.item() == pytest.approx(2 * want, rel=1e-6)


def test_direction_loss_by_hand() -> None:
    forward, backward, first = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0]), torch.tensor([1, 0])
    # labels: forward as given, backward flipped; BCE(x, 1) = log(1 + e^-x), BCE(x, 0) = log(1 + e^x)
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(-1))) / 2
    assert direction_loss(forward, backward, first).item() == pytest.approx(want, rel=1e-6)
    # a clip that reads the same both ways cannot be right on both: log 2 at best
    assert direction_loss(torch.zeros(3), torch.zeros(3), torch.tensor([1, 0, 1])).item() == pytest.approx(
        3 * math.log(2), rel=1e-6
    )


def test_vtm_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    labels = torch.tensor([1, 0])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    assert vtm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_mlm_mask_rates_and_specials() -> None:
    B, L, V = 64, 32, 1000
    ids = torch.randint(10, V, (B, L))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(B, L, dtype=torch.long)
    mask[:, -4:] = 0
    ids[:, -4:] = 1
    masked, labels = mlm_mask(ids, mask, {0, 1, 2}, mask_id=4, vocab_size=V, generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -4:].any()
    rate = chosen.float().sum() / ((mask.sum(1) - 1).sum())
    assert 0.12 < rate < 0.18
    to_mask = (masked[chosen] == 4).float().mean()
    assert 0.7 < to_mask < 0.9
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_mlm_loss_sum_by_hand() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = math.log(3.0)  # p(class 2) = 3 / 6
    labels = torch.tensor([[-100, 2, -100]])
    loss, count = mlm_loss_sum(logits, labels)
    assert count == 1 and loss.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_param_groups_cover_every_parameter_once_with_the_reference_multipliers() -> None:
    from egovlpv2_edge import create_model
    from egovlpv2_edge.training.optim import param_groups

    model = create_model("egovlpv2_test")
    groups = param_groups(model, lr=1e-4, head_lr_mult=4.0, weight_decay=0.01, video_lr_mult=5.0, gate_lr_mult=10.0)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    by_name = {g["name"]: g for g in groups}
    gates = {id(g) for g in model.gates()}
    assert {id(p) for p in by_name["gate_no_decay"]["params"]} == gates
    assert by_name["gate_no_decay"]["lr"] == pytest.approx(4e-3) and by_name["gate_no_decay"]["weight_decay"] == 0
    assert by_name["video_decay"]["lr"] == pytest.approx(5e-4) and by_name["text_decay"]["lr"] == pytest.approx(1e-4)
    head = {id(p) for p in by_name["head_decay"]["params"]}
    assert id(model.heads.vtm.weight) in head and id(model.text.layers[-1].cross.q.weight) in head
    assert all(p.ndim == 1 or "token" in n or "embed" in n
               for n, p in model.named_parameters() if id(p) in {id(q) for g in groups if not g["weight_decay"]
                                                                   for q in g["params"]})  # fmt: skip


def test_fused_schedule_starts_the_cross_modal_groups_with_the_fused_phase() -> None:
    from egovlpv2_edge import create_model
    from egovlpv2_edge.training.optim import cosine_schedule, param_groups

    model = create_model("egovlpv2_test")
    groups = param_groups(model, lr=1e-3, head_lr_mult=4.0, weight_decay=0.01, fused_role=True)
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    xmodal = by_name["xmodal_decay"] | by_name["xmodal_no_decay"]
    assert {
        id(model.heads.vtm.weight),
        id(model.text.layers[-1].cross.q.weight),
        id(model.fusion_norm.weight),
    } <= xmodal
    assert id(model.vid_proj[0].weight) in by_name["head_decay"] and not xmodal & {id(g) for g in model.gates()}
    opt = torch.optim.AdamW(groups)
    sched = cosine_schedule(opt, total_steps=100, warmup=0.1, fused_from=60)
    rates = []
    for _ in range(100):
        rates.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    assert rates[59]["xmodal_decay"] == 0.0 and rates[59]["head_decay"] > 0  # idle until the fused phase
    assert rates[60]["xmodal_decay"] == pytest.approx(4e-3 / 4)  # first of 4 warmup steps over the last 40
    assert rates[63]["xmodal_decay"] == pytest.approx(4e-3)  # peak, while the main schedule has decayed
    assert rates[63]["head_decay"] < 0.5 * 4e-3 and rates[99]["xmodal_decay"] < 1e-4
    plain = cosine_schedule(torch.optim.AdamW(param_groups(model, 1e-3, 4.0, 0.01, fused_role=True)), 100, 0.1)
    assert len(set(plain.lr_lambdas)) == 1  # without fused_from every group follows the main schedule

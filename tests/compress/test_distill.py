"""Distillation: each loss by hand, layer maps and projections, init from the teacher, the task on a fixed batch,
task-head hooks, and runs (outputs, a loadable student, exact resume, the CLI)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from egovlpv2_edge import create_model
from egovlpv2_edge.checkpoint import save_checkpoint
from egovlpv2_edge.compress._cli_distill import main as distill_main
from egovlpv2_edge.compress.distill import (
    DistillConfig,
    DistillError,
    DistillLossConfig,
    DistillTask,
    HiddenProjections,
    affinity_kl,
    build_optimizer_for,
    carried_entries,
    default_head_hooks,
    distill,
    embedding_cosine,
    fused_layer_outputs,
    head_pairs,
    hidden_mse,
    init_from_teacher,
    logit_kl,
    proportional_map,
    same_text_tower,
    save_student,
)
from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.model.egovlpv2 import FusionOutput
from egovlpv2_edge.runconfig import resolve
from egovlpv2_edge.training.data.cli import main as data_main
from egovlpv2_edge.training.text import load_or_train_tokenizer

STUDENT = {"video": {"width": 16, "heads": 2}}  # the tiny preset with a narrower video encoder
SPECIAL, MASK_ID = {0, 1, 2}, 3


def _student() -> EgoVLPv2:
    return create_model("egovlpv2_test", **STUDENT).train()


def _batch(n: int = 4, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 600, (n, 12), generator=g)
    ids[:, 0], ids[:, 9], ids[:, 10:] = 0, 2, 1  # start, end, padding
    mask = (ids != 1).long()
    return {"video": torch.randn(n, 2, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask,
            "verb": torch.eye(n), "noun": torch.eye(n)}  # fmt: skip


def _run(task: DistillTask, b: dict[str, Any], step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, mask = b["input_ids"], b["attention_mask"]
    return task(b["video"], ids, mask, ids, mask, b["verb"], b["noun"], torch.tensor(step))


# ----- losses by hand -----------------------------------------------------------------------------------------------


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_affinity_kl_zero_for_equal_and_hand_value() -> None:
    sim = torch.randn(5, 5)
    assert affinity_kl(sim, sim.clone(), 0.05).item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    student = torch.zeros(2, 2)
    p = math.e / (1 + math.e)
    e5 = math.exp(0.5)
    # text rows: softmax([1, 0]), softmax([0, .5]); video rows (columns): softmax([1, 0]), softmax([0, .5]); all vs 1/2
    row = [_kl([p, 1 - p], [0.5, 0.5]), _kl([1 / (1 + e5), e5 / (1 + e5)], [0.5, 0.5])]
    expected = sum(row) / 2 + sum(row) / 2
    assert affinity_kl(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # the temperature divides the similarities: t = 0.5 doubles them
    e2 = math.e**2
    doubled = [_kl([e2 / (1 + e2), 1 / (1 + e2)], [0.5, 0.5]), _kl([1 / (1 + math.e), p], [0.5, 0.5])]
    assert affinity_kl(student, teacher, 0.5).item() == pytest.approx(sum(doubled), rel=1e-6)


def test_affinity_kl_is_asymmetric_in_directions() -> None:
    teacher = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # two texts prefer video 0
    student = torch.zeros(3, 3)
    t2v = sum(_kl(torch.softmax(r, 0).tolist(), [1 / 3] * 3) for r in teacher) / 3
    v2t = sum(_kl(torch.softmax(r, 0).tolist(), [1 / 3] * 3) for r in teacher.T) / 3
    assert t2v != pytest.approx(v2t)
    assert affinity_kl(student, teacher, 1.0).item() == pytest.approx(t2v + v2t, rel=1e-6)


def test_logit_kl_hand_value_and_temperature_scaling() -> None:
    logits = torch.randn(6, 2)
    assert logit_kl(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student, teacher = torch.zeros(2, 2), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    p = math.e / (1 + math.e)  # softmax([2, 0] / 2)
    # t^2 * KL per row; row 2 agrees; mean over rows
    assert logit_kl(student, teacher, 2.0).item() == pytest.approx(4 * _kl([p, 1 - p], [0.5, 0.5]) / 2, rel=1e-6)
    assert logit_kl(student, teacher, 2.0, "sum").item() == pytest.approx(4 * _kl([p, 1 - p], [0.5, 0.5]), rel=1e-6)
    with pytest.raises(ValueError, match="logit shapes differ"):
        logit_kl(torch.zeros(2, 3), torch.zeros(2, 2), 1.0)


def test_embedding_cosine_hand_value() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2); the scale does not matter
    assert embedding_cosine(student, teacher).item() == pytest.approx((0.0 + 1.0 - 2**-0.5) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="embedding shapes differ"):
        embedding_cosine(student, torch.zeros(2, 3))


def test_hidden_mse_masks_padding_and_projects() -> None:
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    teacher = torch.tensor([[[1.0, 0.0], [9.0, 9.0]]])
    err, n = hidden_mse(student, teacher, nn.Identity(), torch.tensor([[1, 0]]))
    assert (err.item(), n) == (4.0, 2)  # only token 0: (1-1)^2 + (2-0)^2
    proj = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    err, n = hidden_mse(student, torch.zeros(1, 2, 3), proj)
    assert n == 6 and err.item() == pytest.approx(1 + 4 + 9 + 9 + 16 + 49)


# ----- layer maps, projections, fused states -----------------------------------------------------------------------


def test_proportional_map() -> None:
    assert proportional_map(2, 3) == [1, 2]  # edge student (2 fused) over the small teacher (3 fused)
    assert proportional_map(6, 6) == list(range(6))
    assert proportional_map(4, 6) == [1, 2, 4, 5]
    assert proportional_map(1, 3) == [2]
    assert proportional_map(3, 2) == [0, 1, 1]
    with pytest.raises(DistillError, match="at least one layer"):
        proportional_map(0, 3)


def test_hidden_projection_shapes_for_the_edge_pair() -> None:
    from egovlpv2_edge.config import get_config

    proj = HiddenProjections(get_config("egovlpv2_edge"), get_config("egovlpv2_small"))
    assert proj.layer_map == [1, 2]
    student, teacher = get_config("egovlpv2_edge").video.width, get_config("egovlpv2_small").video.width
    assert student != teacher
    assert [tuple(p.weight.shape) for p in proj.video] == [(teacher, student)] * 2
    assert all(isinstance(p, nn.Identity) for p in proj.text)  # both MiniLM: width 384
    out = proj.video[0](torch.zeros(2, 65, student))
    assert out.shape == (2, 65, teacher)


def test_fused_layer_outputs_end_at_fuse_upper() -> None:
    model = create_model("egovlpv2_test", fusion={"num_layers": 2})
    for g in model.gates():
        nn.init.constant_(g, 0.5)
    b = _batch()
    v = model.video_lower(b["video"], "fusion")
    t = model.text_lower(b["input_ids"], b["attention_mask"])
    videos, texts = fused_layer_outputs(model, v, t, b["attention_mask"])
    ref_v, ref_t = model.fuse_upper(v, t, b["attention_mask"])
    assert len(videos) == len(texts) == 2
    torch.testing.assert_close(videos[-1], ref_v)
    torch.testing.assert_close(texts[-1], ref_t)


# ----- init from the teacher ----------------------------------------------------------------------------------------


def test_init_from_teacher_copies_exactly_the_matching_tensors() -> None:
    teacher, student = create_model("egovlpv2_test"), _student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = init_from_teacher(student, teacher)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    copied = dict(report.copied)
    assert copied, report.summary()
    for key, src in copied.items():
        assert torch.equal(s_sd[key], t_sd[src]), key
    for key, reason in report.skipped:
        assert torch.equal(s_sd[key], before[key]), (key, reason)
    assert set(copied) | {k for k, _ in report.skipped} == set(s_sd)
    # the text encoder (same width) is copied, except the cross-attention reading video tokens of another width
    assert "text.layers.1.q.weight" in copied and "text.embeddings.word.weight" in copied
    assert not any(".cross." in k for k in copied)
    assert "text.layers.1.cross.q.weight" in {k for k, _ in report.skipped}  # fits alone, but not its branch
    # of the video side (another width) only the motion branch fits: its convolutions and direction head
    assert {k for k in copied if k.startswith("video.")} == {
        f"video.motion.convs.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
    } | {"video.motion.direction.weight", "video.motion.direction.bias"}


def test_init_from_teacher_on_the_edge_presets_copies_the_minilm_text_encoder() -> None:
    teacher, student = create_model("egovlpv2_small"), create_model("egovlpv2_edge")
    report = init_from_teacher(student, teacher)
    copied = dict(report.copied)
    assert report.text_map == list(range(6)) and report.video_map == [1, 2, 4, 5]
    text_keys = [k for k in student.state_dict() if k.startswith("text.") and ".cross." not in k]
    assert set(text_keys) <= set(copied)  # every MiniLM tensor, layer i from layer i
    assert copied["text.layers.3.fc1.weight"] == "text.layers.3.fc1.weight"
    assert {"txt_proj.1.weight", "heads.mlm.decoder.weight", "heads.vtm.weight"} <= set(copied)
    assert not any(k.startswith("video.") or ".cross." in k for k in copied)


# ----- the task on a fixed batch ------------------------------------------------------------------------------------


def test_student_equal_to_teacher_has_zero_distillation_loss() -> None:
    teacher = create_model("egovlpv2_test")
    for g in teacher.gates():
        nn.init.constant_(g, 0.3)
    task = DistillTask(copy.deepcopy(teacher).train(), teacher, SPECIAL, MASK_ID, DistillLossConfig())
    _, logs = _run(task, _batch())
    for key in ("kd_affinity", "kd_embed", "kd_vtm", "kd_mlm", "kd_hidden"):
        assert logs[key].item() == pytest.approx(0.0, abs=1e-5), key
    assert logs["egonce"] > 0 and logs["mlm"] > 0 and logs["vtm"] > 0


def test_short_distillation_reduces_the_distillation_loss_on_a_fixed_batch() -> None:
    teacher = create_model("egovlpv2_test")
    for g in teacher.gates():
        nn.init.constant_(g, 0.5)
    with torch.no_grad():  # a confident VTM head, so its KL is not ~0 from the start (random heads output ~0)
        teacher.heads.vtm.weight.mul_(100)
    task = DistillTask(_student(), teacher, SPECIAL, MASK_ID, DistillLossConfig(gt_weight=0.0))
    opt = build_optimizer_for(task, resolve(DistillConfig, None, ["optim.lr=1e-3"]).optim)
    b = _batch(seed=1)
    history = []
    for _ in range(25):
        loss, logs = _run(task, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in logs.items()})
    first, last = history[0], history[-1]
    assert last["distill"] < 0.5 * first["distill"], (first, last)
    for key in ("kd_affinity", "kd_embed", "kd_vtm", "kd_mlm", "kd_hidden"):
        assert last[key] < first[key], key
    assert first["egonce"] == 0.0 and first["loss"] == pytest.approx(first["distill"])  # gt_weight=0


def test_dual_only_distillation_runs_no_fused_pass() -> None:
    from egovlpv2_edge.training.pretrain import LossConfig

    teacher = create_model("egovlpv2_test")
    off = {"mlm_weight": 0.0, "vtm_weight": 0.0, "hidden_weight": 0.0, "head_weight": 0.0}
    cfg = DistillLossConfig(gt=LossConfig(mlm_weight=0.0, vtm_weight=0.0), **off)
    task = DistillTask(_student(), teacher, SPECIAL, MASK_ID, cfg)
    calls = []
    for m in (task.student, task.teacher):
        m.fuse_upper = lambda *a, **k: calls.append(1)  # type: ignore[method-assign]  # any fused pass is recorded
    loss, logs = _run(task, _batch())
    loss.backward()
    assert not calls
    assert logs["egonce"] > 0 and logs["kd_affinity"] > 0
    assert all(logs[k].item() == 0.0 for k in ("mlm", "vtm", "kd_mlm", "kd_vtm", "kd_hidden", "kd_heads"))


def test_fused_terms_join_at_fused_from() -> None:
    teacher = create_model("egovlpv2_test")
    task = DistillTask(_student(), teacher, SPECIAL, MASK_ID, DistillLossConfig())
    task.fused_from = 2
    calls = []
    original = task.student.fuse_upper
    task.student.fuse_upper = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    fused = ("mlm", "vtm", "kd_mlm", "kd_vtm", "kd_hidden")
    for step in (0, 1):
        _, logs = _run(task, _batch(), step)
        assert not calls and all(logs[k].item() == 0.0 for k in fused), step
        assert logs["kd_affinity"] > 0 and logs["kd_embed"] > 0
    _, logs = _run(task, _batch(), 2)
    assert calls and all(logs[k].item() > 0 for k in fused)


def test_mlm_distillation_is_skipped_without_a_shared_vocabulary(caplog) -> None:
    teacher = create_model("egovlpv2_test")
    with caplog.at_level("WARNING"):
        task = DistillTask(_student(), teacher, SPECIAL, MASK_ID, DistillLossConfig(), shared_vocab=False)
    assert "MLM-logit distillation skipped" in caplog.text
    b = _batch()
    ids, mask = b["input_ids"], b["attention_mask"]
    t_ids, t_mask = ids[:, :10].clone(), mask[:, :10].clone()  # another tokenisation: other length
    _, logs = task(b["video"], ids, mask, t_ids, t_mask, b["verb"], b["noun"], torch.tensor(0))
    assert logs["kd_mlm"].item() == 0.0 and logs["kd_hidden"] > 0 and logs["mlm"] > 0


def _text_grads(task: DistillTask) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in task.student.named_parameters() if n.startswith(("text.", "txt_proj."))}


def test_frozen_text_tower_takes_the_teachers_text_side_and_trains_the_rest() -> None:
    teacher = create_model("egovlpv2_test")
    for g in teacher.gates():
        nn.init.constant_(g, 0.3)
    student = _student()
    init_from_teacher(student, teacher)  # the text tower is copied whole (same text config)
    assert same_text_tower(student, teacher)
    torch.manual_seed(0)  # the same hidden-state projections in both
    frozen = DistillTask(copy.deepcopy(student), teacher, SPECIAL, MASK_ID, DistillLossConfig(), freeze_text=True)
    torch.manual_seed(0)
    free = DistillTask(copy.deepcopy(student), teacher, SPECIAL, MASK_ID, DistillLossConfig())
    assert frozen.text_from_teacher and not free.text_from_teacher
    b = _batch()
    (loss_f, logs_f), (loss_u, logs_u) = _run(frozen, b), _run(free, b)
    for key in logs_u:  # the teacher's text embeddings stand in for an identical tower: the same values
        assert logs_f[key].item() == pytest.approx(logs_u[key].item(), rel=1e-4, abs=1e-6), key
    loss_f.backward()
    loss_u.backward()
    grads = _text_grads(frozen)
    assert all(g is None for n, g in grads.items() if ".cross." not in n)  # the tower gets no gradient
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".cross." in n)  # cross-attention
    assert frozen.student.video.patch_embed.weight.grad.abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in _text_grads(free).items() if ".cross." not in n)
    opt = build_optimizer_for(frozen, resolve(DistillConfig, None, []).optim)
    assert not any(
        p is q for g in opt.param_groups for p in g["params"] for q in frozen.student.text.embeddings.parameters()
    )


def test_frozen_text_tower_unlike_the_teacher_computes_its_own_embeddings() -> None:
    teacher, student = create_model("egovlpv2_test"), _student()  # independent random text towers
    assert not same_text_tower(student, teacher)
    task = DistillTask(student, teacher, SPECIAL, MASK_ID, DistillLossConfig(), freeze_text=True)
    assert task.text_frozen and not task.text_from_teacher
    loss, logs = _run(task, _batch())
    loss.backward()
    assert logs["kd_embed"] > 0 and logs["egonce"] > 0
    assert all(g is None for n, g in _text_grads(task).items() if ".cross." not in n)


def test_mismatched_pair_is_a_typed_error() -> None:
    with pytest.raises(DistillError, match="num_frames"):
        DistillTask(create_model("egovlpv2_test", video={"num_frames": 4}), create_model("egovlpv2_test"), SPECIAL,
                    MASK_ID, DistillLossConfig())  # fmt: skip


# ----- task heads ---------------------------------------------------------------------------------------------------


class ToyHook:
    """A 3-way answer head over the fused video CLS, stored as ``toy_head`` (what a QA task would register)."""

    def load(self, checkpoint: Mapping[str, Any], model: EgoVLPv2) -> nn.Module | None:
        if "toy_head" not in checkpoint:
            return None
        head = nn.Linear(model.cfg.video.width, 3)
        head.load_state_dict(checkpoint["toy_head"])
        return head

    def logits(self, head: nn.Module, fused: FusionOutput) -> torch.Tensor:
        return head(fused.video_cls)

    def save(self, head: nn.Module) -> dict[str, Any]:
        return {"toy_head": head.state_dict()}


def test_task_head_hook_distils_and_is_saved(tmp_path) -> None:
    teacher, student = create_model("egovlpv2_test"), _student()
    t_head, s_head = nn.Linear(32, 3), nn.Linear(16, 3)
    t_ckpt = {"toy_head": t_head.state_dict(), "answer_vocabs": {"toy": ["yes", "no", "maybe"]}, "step": 7}
    hook = ToyHook()
    task = DistillTask(student, teacher, SPECIAL, MASK_ID, DistillLossConfig(gt_weight=0.0),
                       teacher_heads={"toy": hook.load(t_ckpt, teacher)},
                       student_heads={"toy": hook.load({"toy_head": s_head.state_dict()}, student)},
                       hooks={"toy": hook})  # fmt: skip
    loss, logs = _run(task, _batch())
    assert logs["kd_heads"] > 0
    loss.backward()
    assert task.heads["toy"].weight.grad is not None and task.heads["toy"].weight.grad.abs().sum() > 0
    assert "toy_head" not in carried_entries(t_ckpt)  # teacher-width weights never reach the student
    path = save_student(task, tmp_path / "student.pt", t_ckpt, step=1)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["answer_vocabs"] == {"toy": ["yes", "no", "maybe"]} and ckpt["step"] == 1
    assert torch.equal(ckpt["toy_head"]["weight"], task.heads["toy"].weight.detach())
    reloaded = create_model("egovlpv2_test", pretrained=str(path), **STUDENT)
    assert torch.equal(reloaded.video.pos_embed, student.video.pos_embed.detach())


# ----- runs ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    synth = tmp_path_factory.mktemp("synth")
    args = ["synth", "--out", str(synth), "--videos", "6", "--min-actions", "8", "--max-actions", "10"]
    assert data_main(args + ["--size", "48", "--chunk-seconds", "30", "--workers", "1"]) == 0
    tdir = tmp_path_factory.mktemp("teacher")
    teacher = create_model("egovlpv2_test")
    for g in teacher.gates():
        nn.init.constant_(g, 0.5)
    tok = tdir / "tokenizer.json"
    load_or_train_tokenizer(teacher.cfg.text, synth / "egoclip.csv", tok)
    save_checkpoint(teacher, tdir / "teacher.pt", step=10, tokenizer=str(tok), answer_vocabs={"qa": ["a", "b"]})
    return {"data": synth, "teacher": tdir / "teacher.pt"}


def _common(setup: dict[str, Path]) -> list[str]:
    return [f"teacher={setup['teacher']}", f"data={setup['data']}", "student_preset=egovlpv2_test",
            f"model={json.dumps(STUDENT)}", "num_workers=0", "threads=1", "log_every=1", "batch_size=4",
            "ckpt_every=100"]  # fmt: skip


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_outputs_and_a_loadable_student(setup, tmp_path) -> None:
    out = tmp_path / "run"
    final = distill(resolve(DistillConfig, None, _common(setup) + [f"out={out}", "max_steps=2"]))
    assert final == out / "student.pt"
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["student_preset"] == "egovlpv2_test" and "git_revision" in saved
    assert (out / "curves.png").stat().st_size > 1000 and (out / "tokenizer.json").is_file()
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss", "distill", "egonce", "kd_affinity", "kd_vtm", "kd_mlm", "kd_hidden", "lr", "clips_per_s"} <= set(
        rows[-1]
    )
    ckpt = torch.load(final, weights_only=True)
    assert ckpt["answer_vocabs"] == {"qa": ["a", "b"]} and ckpt["step"] == 2
    assert ckpt["distilled_from"] == str(setup["teacher"]) and ckpt["init_from_teacher"]["copied"]
    model = create_model("egovlpv2_test", pretrained=str(final), **STUDENT)
    assert torch.equal(model.video.pos_embed, ckpt["model"]["video.pos_embed"])


def test_stop_and_resume_equals_uninterrupted(setup, tmp_path) -> None:
    common = _common(setup) + ["max_steps=4"]
    straight = tmp_path / "straight"
    distill(resolve(DistillConfig, None, common + [f"out={straight}"]))
    paused = tmp_path / "paused"
    last = distill(resolve(DistillConfig, None, common + [f"out={paused}", "stop_at=2"]))
    assert last.name == "last.pt" and not (paused / "student.pt").exists()
    assert distill_main(["--teacher", str(setup["teacher"]), "--data", str(setup["data"]), "--out", str(paused),
                         "--student-preset", "egovlpv2_test", *common[3:]]) == 0  # fmt: skip
    sa = torch.load(straight / "student.pt", weights_only=True)["model"]
    sb = torch.load(paused / "student.pt", weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [r["step"] for r in _metrics(paused)] == [1, 2, 3, 4]
    assert [r["distill"] for r in _metrics(paused)] == [r["distill"] for r in _metrics(straight)]


def test_qa_head_of_finetuned_checkpoints_is_distilled_and_carried(setup, tmp_path, caplog) -> None:
    from egovlpv2_edge.training.tasks.checkpoint import load_finetuned, save_finetuned
    from egovlpv2_edge.training.tasks.heads import QAHead

    tok = setup["teacher"].parent / "tokenizer.json"
    vocab, teacher, student = {"answers": ["cup", "bowl", "knife"]}, create_model("egovlpv2_test"), _student()
    t_head = QAHead(32, 3)
    with torch.no_grad():  # logits well above float noise (the init's are ~1e-3: their KL rounds to +-1e-8)
        for p in t_head.parameters():
            p.normal_(0.0, 1.0)
    t_path = save_finetuned(tmp_path / "t.pt", teacher, tok, "qa", "fusion", t_head, vocab, {}, {}, 5)
    s_path = save_finetuned(tmp_path / "s.pt", student, tok, "qa", "fusion", QAHead(16, 3), vocab, {}, {}, 5)
    out = tmp_path / "run"
    common = [c for c in _common(setup) if not c.startswith("teacher=")]
    with caplog.at_level("WARNING", logger="egovlpv2_edge.compress._distill_heads"):
        final = distill(resolve(DistillConfig, None, common + [f"teacher={t_path}", f"student_init={s_path}",
                                                               f"out={out}", "max_steps=2"]))  # fmt: skip
    assert all(r["kd_heads"] > 0 for r in _metrics(out))
    run = load_finetuned(final, expect="qa")
    assert run.vocab == vocab and run.head is not None and run.head.in_dim == 16
    assert run.model.cfg.video.width == 16
    # none of the head's answers is in the data's QA split: no gates-off head, said so, and the run still finishes
    assert "no dual QA head for the student: no QA train question" in caplog.text
    assert "dual_head" not in torch.load(final, weights_only=True)["task"]


def test_cli_reports_bad_input(setup, tmp_path, capsys) -> None:
    args = ["--data", str(setup["data"]), "--out", str(tmp_path / "o")]
    assert distill_main(["--teacher", str(tmp_path / "missing.pt"), *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert distill_main(["--teacher", str(setup["teacher"]), *args, "batch_sise=4"]) == 2
    assert "unknown key" in capsys.readouterr().err


# ----- the QA head: a fresh student head, distilled on QA questions ------------------------------------------------


def _questions(n: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    q = _batch(n, seed)
    return {"video": q["video"], "ids": q["input_ids"], "mask": q["attention_mask"], "t_ids": q["input_ids"],
            "t_mask": q["attention_mask"]}  # fmt: skip


def test_qa_head_kl_on_questions_is_zero_for_a_copy_and_trains_a_fresh_student_head() -> None:
    from egovlpv2_edge.compress.distill import FinetunedQAHook
    from egovlpv2_edge.training.tasks.heads import QAHead

    teacher = create_model("egovlpv2_test")
    student = copy.deepcopy(teacher).train()
    t_head = QAHead(32, 4).eval()
    with torch.no_grad():
        for p in t_head.parameters():
            p.normal_(0.0, 1.0)
    hook, b, qa = FinetunedQAHook(), _batch(), _questions()

    def task(s_head: nn.Module) -> DistillTask:
        return DistillTask(student, teacher, SPECIAL, MASK_ID, DistillLossConfig(gt_weight=0.0),
                           teacher_heads={"qa": t_head}, student_heads={"qa": s_head.eval()},
                           hooks={"qa": hook})  # fmt: skip

    ids, mask = b["input_ids"], b["attention_mask"]
    args = (b["video"], ids, mask, ids, mask, b["verb"], b["noun"], torch.tensor(0))
    _, logs = task(copy.deepcopy(t_head))(*args, qa=qa)
    assert logs["kd_heads_qa"].item() == pytest.approx(0.0, abs=1e-6)
    fresh = hook.create(t_head, create_model("egovlpv2_test", **STUDENT))
    assert (fresh.in_dim, fresh.num_answers, fresh.dropout) == (16, 4, t_head.dropout)
    # the answer-to-answer layer fits and is copied (its bias holds the answer prior); the input layer is fresh
    assert torch.equal(fresh.net[3].weight, t_head.net[3].weight) and torch.equal(fresh.net[3].bias, t_head.net[3].bias)
    assert fresh.net[0].weight.shape != t_head.net[0].weight.shape
    fresh = hook.create(t_head, student)  # the same width: every tensor fits and is copied
    mine, theirs = fresh.state_dict(), t_head.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        fresh.net[0].weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))  # make it differ
    distilling = task(fresh)
    loss, logs = distilling(*args, qa=qa)
    with torch.no_grad():  # by hand: KL of the head's softened logits on the questions' fused video CLS
        s_logits = fresh(student.forward_fusion(qa["video"], qa["ids"], qa["mask"]).video_cls)
        t_logits = t_head(teacher.forward_fusion(qa["video"], qa["t_ids"], qa["t_mask"]).video_cls)
    assert logs["kd_heads_qa"].item() == pytest.approx(logit_kl(s_logits, t_logits, 2.0, "sum").item() / 4, rel=1e-5)
    assert logs["kd_heads"].item() > logs["kd_heads_qa"].item() > 0  # the fused pairs add their own KL
    loss.backward()
    assert fresh.net[0].weight.grad is not None and fresh.net[0].weight.grad.abs().sum() > 0


def test_student_without_a_head_gets_one_distilled_on_questions_and_resumes_exactly(setup, tmp_path, caplog) -> None:
    from egovlpv2_edge.compress.export import check_qa_head, checkpoint_qa_head
    from egovlpv2_edge.training.data.qa import read_qa
    from egovlpv2_edge.training.tasks._setup import ensure_task_files
    from egovlpv2_edge.training.tasks.checkpoint import load_finetuned, save_finetuned
    from egovlpv2_edge.training.tasks.heads import QAHead

    tok = setup["teacher"].parent / "tokenizer.json"
    vocab = {"answers": list(read_qa(ensure_task_files(setup["data"], "qa.json")).answer_set)}  # the split's answers
    t_head = QAHead(32, len(vocab["answers"]))
    with torch.no_grad():
        for p in t_head.parameters():
            p.normal_(0.0, 1.0)
    t_path = save_finetuned(tmp_path / "t.pt", create_model("egovlpv2_test"), tok, "qa", "fusion", t_head, vocab,
                            {"text_length": 10}, {}, 5)  # fmt: skip
    common = [c for c in _common(setup) if not c.startswith("teacher=")] + [f"teacher={t_path}", "max_steps=3"]
    straight = tmp_path / "straight"
    with caplog.at_level("INFO", logger="egovlpv2_edge.compress._distill_heads"):
        final = distill(resolve(DistillConfig, None, common + [f"out={straight}"]))
    assert "student QA head warm start: 30 epochs" in caplog.text  # the fresh head is fitted first
    rows = _metrics(straight)
    assert all(r["kd_heads_qa"] > 0 and r["kd_heads"] > r["kd_heads_qa"] for r in rows)
    run = load_finetuned(final, expect="qa")
    assert run.head is not None and run.head.in_dim == 16 and run.vocab == vocab and run.mode == "fusion"
    assert run.params == {"text_length": 10}
    qa = checkpoint_qa_head(final)  # what `egovlp compress export --checkpoint student.pt` exports
    assert qa is not None and qa.answers == tuple(vocab["answers"])
    check_qa_head(run.model, qa.head)
    paused = tmp_path / "paused"
    assert distill(resolve(DistillConfig, None, common + [f"out={paused}", "stop_at=2"])).name == "last.pt"
    distill(resolve(DistillConfig, None, common + [f"out={paused}"]))
    a, b = (torch.load(p / "student.pt", weights_only=True) for p in (straight, paused))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["task"]["head"]:
        assert torch.equal(a["task"]["head"][key], b["task"]["head"][key]), key
    assert [r["kd_heads_qa"] for r in _metrics(paused)] == [r["kd_heads_qa"] for r in rows]
    # the student's gates-off QA head: fitted on the student's own embeddings, over the QA head's answers
    assert a["task"]["dual_head"]["answers"] == vocab["answers"] and a["task"]["dual_head"]["config"]["in_dim"] == 48
    for key in a["task"]["dual_head"]["state"]:
        assert torch.equal(a["task"]["dual_head"]["state"][key], b["task"]["dual_head"]["state"][key]), key


def test_student_qa_head_warm_start_fits_the_answers_of_the_qa_split(setup, tmp_path) -> None:
    from egovlpv2_edge.compress._distill_heads import fresh_qa_head, qa_batches, warm_student_qa_head
    from egovlpv2_edge.tokenizer import Tokenizer
    from egovlpv2_edge.training.data.qa import read_qa
    from egovlpv2_edge.training.distributed import DistInfo
    from egovlpv2_edge.training.tasks._setup import ensure_task_files
    from egovlpv2_edge.training.tasks.checkpoint import save_finetuned
    from egovlpv2_edge.training.tasks.heads import QAHead

    torch.manual_seed(0)
    tok_path = setup["teacher"].parent / "tokenizer.json"
    answer_set = read_qa(ensure_task_files(setup["data"], "qa.json")).answer_set
    dropped = answer_set[0]  # an answer the head does not score: its questions are left out of the fit
    vocab = {"answers": list(answer_set[1:])}
    teacher, student = create_model("egovlpv2_test"), _student()
    t_path = save_finetuned(tmp_path / "t.pt", teacher, tok_path, "qa", "fusion", QAHead(32, len(answer_set) - 1),
                            vocab, {"text_length": 10}, {}, 5)  # fmt: skip
    hooks = default_head_hooks()
    t_ckpt = torch.load(t_path, weights_only=False)
    t_heads, s_heads = head_pairs(hooks, t_ckpt, teacher, None, student)
    assert fresh_qa_head(s_heads, None) and not fresh_qa_head({}, None)
    assert not fresh_qa_head(s_heads, t_ckpt)  # a student init that carries a QA head keeps it as it is
    task = DistillTask(student, teacher, SPECIAL, MASK_ID, DistillLossConfig(), teacher_heads=t_heads,
                       student_heads=s_heads, hooks=hooks)  # fmt: skip
    tok = Tokenizer.from_file(tok_path)
    batches = qa_batches(setup["data"], task, 4, DistInfo(0, 1, 0, torch.device("cpu")), 0, 0, (tok, tok))
    assert batches is not None
    labels = [batches.data.items[i].answer for i in range(len(batches.data))]
    kept = [a for a in labels if a != dropped]
    majority = max(kept.count(a) for a in set(kept)) / len(kept)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    head_before = {k: v.clone() for k, v in task.heads["qa"].state_dict().items()}
    accuracy = warm_student_qa_head(task, batches, epochs=150, seed=0, show=False)
    # each training window asks several questions of one clip, and a random tiny student's fused features carry
    # little of the question, so the fit cannot memorise every answer; it must still clearly beat the majority answer
    assert accuracy is not None and accuracy > majority + 0.1, (accuracy, majority)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # the student is not trained
    assert student.training  # and is left in the mode it was in
    assert any(not torch.equal(head_before[k], v) for k, v in task.heads["qa"].state_dict().items())
    # a head with none of the split's answers is left as it was
    hooks["qa"]._payloads[id(task.heads["qa"])]["vocab"] = {"answers": ["no such answer"]}
    head_before = {k: v.clone() for k, v in task.heads["qa"].state_dict().items()}
    assert warm_student_qa_head(task, batches, epochs=5, seed=0, show=False) is None
    assert all(torch.equal(head_before[k], v) for k, v in task.heads["qa"].state_dict().items())

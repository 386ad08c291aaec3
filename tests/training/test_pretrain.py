"""Pre-training runs: 2-process torchrun equals 1 process, exact resume, outputs of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egovlpv2_edge.runconfig import resolve
from egovlpv2_edge.training.data.cli import main as data_main
from egovlpv2_edge.training.trainer import PretrainConfig, train

# deterministic model (no dropout) so processes see the same computation
BASE = [
    "preset=egovlpv2_test",
    'model={"video": {"img_size": 32}, "text": {"dropout": 0.0}}',
    "num_workers=0",
    "threads=1",
    "log_every=1",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    args = ["synth", "--out", str(out), "--videos", "6", "--min-actions", "8", "--max-actions", "10"]
    assert data_main(args + ["--size", "48", "--chunk-seconds", "30", "--workers", "1"]) == 0
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_process_torchrun_matches_one_process(synth, tmp_path) -> None:
    # the first step trains the dual encoders alone (DDP then sees unused fusion parameters), the others everything
    common = BASE + [f"data={synth}", "batch_size=8", "max_steps=3", "scene_negatives=true", "loss.fusion_start=0.34"]
    # the extra terms' averages span the processes too
    common += ["loss.reverse_weight=1.0", "loss.reverse_pair_weight=1.0", "loss.shuffle_weight=1.0"]
    common += ["loss.direction_weight=1.0"]
    one = tmp_path / "one"
    train(resolve(PretrainConfig, None, common + [f"out={one}"]))
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "egovlpv2_edge.training.cli", "pretrain", *common, f"out={two}"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    assert a[0]["mlm"] == a[0]["vtm"] == 0.0 and all(r["mlm"] > 0 and r["vtm"] > 0 for r in a[1:])
    assert all(r["reverse"] > 0 and r["reverse_pair"] > 0 and r["shuffle"] > 0 and r["direction"] > 0 for r in a)
    for ra, rb in zip(a, b, strict=True):
        assert ra["direction_acc"] == rb["direction_acc"]  # a share of the same global readings
        for key in ("loss", "egonce", "mlm", "vtm", "reverse", "reverse_pair", "shuffle", "direction"):
            assert abs(ra[key] - rb[key]) <= 1e-4 * abs(ra[key]), (key, ra[key], rb[key])


def test_stop_and_resume_equals_uninterrupted(synth, tmp_path) -> None:
    common = BASE + [f"data={synth}", "batch_size=8", "epochs=2", "ckpt_every=100"]
    straight = tmp_path / "straight"
    train(resolve(PretrainConfig, None, common + [f"out={straight}"]))
    paused = tmp_path / "paused"
    last = train(resolve(PretrainConfig, None, common + [f"out={paused}", "stop_at=3"]))
    assert last.name == "last.pt" and not (paused / "teacher.pt").exists()
    assert torch.load(last, weights_only=False)["step"] == 3
    train(resolve(PretrainConfig, None, common + [f"out={paused}"]))
    sa = torch.load(straight / "teacher.pt", weights_only=False)["model"]
    sb = torch.load(paused / "teacher.pt", weights_only=False)["model"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [r["step"] for r in _metrics(paused)] == list(range(1, len(_metrics(straight)) + 1))


def test_standardized_vtm_start_changes_only_the_poolers_and_resumes_exactly(synth, tmp_path) -> None:
    common = BASE + [f"data={synth}", "batch_size=8", "max_steps=3", "loss.fusion_start=0.5", "loss.mlm_weight=0"]
    common += ["optim.lr=1e-30", "optim.fused_schedule=true"]  # nothing moves by 1e-29 but the standardised poolers
    runs = {}
    for name, extra in (
        ("plain", []),
        ("std", ["loss.vtm_standardize=true"]),
        ("paused", ["loss.vtm_standardize=true"]),
    ):
        out = tmp_path / name
        if name == "paused":  # stop right before the first fused step (2 of 3), then go on
            assert train(resolve(PretrainConfig, None, common + extra + [f"out={out}", "stop_at=2"])).name == "last.pt"
        train(resolve(PretrainConfig, None, common + extra + [f"out={out}"]))
        runs[name] = torch.load(out / "teacher.pt", weights_only=False)["model"]
    changed = {k for k in runs["plain"] if not torch.allclose(runs["plain"][k], runs["std"][k], rtol=0, atol=1e-6)}
    assert changed == {f"heads.{side}_pooler.dense.{p}" for side in ("text", "video") for p in ("weight", "bias")}
    assert all(torch.equal(runs["std"][k], runs["paused"][k]) for k in runs["std"])


def test_run_writes_config_curves_and_checkpoint(synth, tmp_path) -> None:
    out = tmp_path / "run"
    final = train(resolve(PretrainConfig, None, BASE + [f"data={synth}", f"out={out}", "batch_size=4", "max_steps=2"]))
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["preset"] == "egovlpv2_test" and "git_revision" in saved
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "tokenizer.json").is_file()
    ckpt = torch.load(final, weights_only=False)
    assert ckpt["config"]["name"] == "egovlpv2_test" and ckpt["step"] == 2
    row = _metrics(out)[-1]
    assert {"loss", "egonce", "mlm", "vtm", "lr", "clips_per_s"} <= set(row)


def test_a_missing_chunk_stops_the_run_before_it_starts_or_is_skipped_and_counted(synth, tmp_path, caplog, capsys):
    import shutil

    from egovlpv2_edge.training.data.video import VideoReadError

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    chunk = sorted((data / "videos").glob("*/0.mp4"))[0]
    chunk.unlink()
    args = BASE + [f"data={data}", f"out={tmp_path / 'run'}", "batch_size=4", "max_steps=1"]
    with pytest.raises(VideoReadError, match="does not exist.*skip_bad=true"):
        train(resolve(PretrainConfig, None, args))
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing trained or saved
    from egovlpv2_edge.training.cli import main as train_main

    assert train_main(["pretrain", *args]) == 2  # the command prints the message, not a traceback
    assert f"{chunk} does not exist" in capsys.readouterr().err
    with caplog.at_level("WARNING"):
        final = train(resolve(PretrainConfig, None, args + ["skip_bad=true"]))
    assert final.name == "teacher.pt"
    done = [r.getMessage() for r in caplog.records if "trained without" in r.getMessage()]
    assert len(done) == 1 and "0 malformed csv row(s)" in done[0] and "missing or corrupt" in done[0]


def test_a_malformed_csv_row_stops_the_run_or_is_skipped_once_and_counted(synth, tmp_path, caplog, capsys) -> None:
    import shutil

    from egovlpv2_edge.training.cli import main as train_main

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    lines = (data / "egoclip.csv").read_text().splitlines()
    lines[4] = lines[4].replace("\t[", "\tbroken[", 1)
    (data / "egoclip.csv").write_text("\n".join(lines) + "\n")
    args = BASE + [f"data={data}", f"out={tmp_path / 'run'}", "batch_size=4", "max_steps=1"]  # a BPE preset
    assert train_main(["pretrain", *args]) == 2
    err = capsys.readouterr().err
    assert "egoclip.csv line 5" in err and "skip_bad=true" in err
    with caplog.at_level("WARNING"):
        assert train(resolve(PretrainConfig, None, args + ["skip_bad=true"])).name == "teacher.pt"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("line 5" in m for m in messages) == 1  # warned once, though the tokenizer and the clips both need it
    assert any("1 malformed csv row(s), 0 clip(s)" in m for m in messages)


def test_bad_config_values_are_clear_errors(synth, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown key"):
        resolve(PretrainConfig, None, ["bacth_size=3"])
    cfg = resolve(PretrainConfig, None, BASE + [f"data={synth}", f"out={tmp_path}", "batch_size=5000"])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(cfg)


def test_dual_warmup_leaves_the_fusion_weights_alone(synth, tmp_path) -> None:
    run = tmp_path / "warm"
    args = BASE + [f"data={synth}", "batch_size=8", "max_steps=2", "loss.fusion_start=1.0", f"out={run}"]
    train(resolve(PretrainConfig, None, args))
    rows = _metrics(run)
    assert [r["mlm"] for r in rows] == [r["vtm"] for r in rows] == [0.0, 0.0]
    assert rows[0]["egonce"] > 0
    state = torch.load(run / "teacher.pt", map_location="cpu", weights_only=False)["model"]
    gates = [v for k, v in state.items() if k.endswith(".gate")]
    assert gates and all(v.abs().max() == 0 for v in gates)  # never used, so never moved from 0


def test_locked_text_backbone_stays_as_loaded_while_fusion_and_video_train(synth, tmp_path) -> None:
    from egovlpv2_edge.training.optim import is_text_backbone

    run = tmp_path / "locked"
    args = BASE + [f"data={synth}", "batch_size=8", "max_steps=2", "optim.text_lr_mult=0", f"out={run}"]
    assert train(resolve(PretrainConfig, None, args + ["stop_at=1"])).name == "last.pt"
    before = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    train(resolve(PretrainConfig, None, args))
    after = torch.load(run / "teacher.pt", map_location="cpu", weights_only=False)["model"]
    text = [k for k in after if is_text_backbone(k)]
    assert text and all(torch.equal(before["model"][k], after[k]) for k in text)
    moved = [k for k in after if not torch.equal(before["model"][k], after[k])]
    assert any(k.startswith("video.") for k in moved)
    assert any(k.startswith("text.") and ".cross." in k for k in moved)  # the text side's cross-attention trains
    assert all(not is_text_backbone(k) for k in moved)
    names = {g["name"] for g in before["optimizer"]["param_groups"]}
    assert not any(n.startswith("text_") for n in names)  # no optimizer state for the locked tower


def test_shuffled_order_is_never_the_original() -> None:
    from egovlpv2_edge.training.pretrain import shuffled_order

    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        perm = shuffled_order(4, gen)
        assert sorted(perm.tolist()) == [0, 1, 2, 3] and perm.tolist() != [0, 1, 2, 3]
        seen.add(tuple(perm.tolist()))
    assert len(seen) == 23  # every other order of 4 frames comes up
    assert shuffled_order(2, gen).tolist() == [1, 0]


def test_resume_under_other_settings_is_a_clear_error_and_a_fresh_start_clears_old_metrics(synth, tmp_path) -> None:
    common = BASE + [f"data={synth}", "batch_size=4", f"out={tmp_path / 'run'}"]
    train(resolve(PretrainConfig, None, common + ["max_steps=3", "stop_at=1"]))
    with pytest.raises(ValueError, match=r"other settings \(max_steps: 3 -> 4\).*resume=false"):
        train(resolve(PretrainConfig, None, common + ["max_steps=4"]))
    train(resolve(PretrainConfig, None, common + ["max_steps=2", "resume=false"]))  # starts over in the same folder
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [1, 2]


def test_reverse_text_table_holds_each_clips_narration_with_the_reverse_verb(synth, tmp_path) -> None:
    from egovlpv2_edge import create_model
    from egovlpv2_edge.training.data.taxonomy import read_nouns, read_verbs, reverse_narrations
    from egovlpv2_edge.training.pretrain import reverse_text_table
    from egovlpv2_edge.training.text import load_or_train_tokenizer

    verbs = {v["key"]: int(v["id"]) for v in read_verbs(synth / "verbs.csv")}
    nouns = {n["name"]: int(n["id"]) for n in read_nouns(synth / "nouns.csv")}
    narrations = reverse_narrations(synth)
    assert narrations[(verbs["pick_up"], nouns["red cup"])] == "#C C puts down the red cup"
    assert narrations[(verbs["close"], nouns["red cup"])] == "#C C opens the red cup"  # any noun, as the eval's
    assert {v for v, _ in narrations} == {int(v["id"]) for v in read_verbs(synth / "verbs.csv") if v["reverse"]}
    # the generator narrates in the same words: many clips' texts are some other clip's reverse narration
    texts = {line.split("\t")[8] for line in (synth / "egoclip.csv").read_text().splitlines()[1:]}
    assert len(texts & set(narrations.values())) >= 5

    text_cfg = create_model("egovlpv2_test").cfg.text
    tok = load_or_train_tokenizer(text_cfg, synth / "egoclip.csv", tmp_path / "tokenizer.json")
    ids, mask = reverse_text_table(narrations, tok, len(verbs), len(nouns), text_cfg.max_length)
    assert ids.shape == mask.shape == (len(verbs), len(nouns), text_cfg.max_length)
    want = tok.encode(["#C C puts down the red cup"], max_length=text_cfg.max_length)
    assert ids[verbs["pick_up"], nouns["red cup"]].tolist() == want.input_ids[0].tolist()
    assert mask[verbs["pick_up"], nouns["red cup"]].tolist() == want.attention_mask[0].tolist()
    no_reverse = [i for i in range(len(verbs)) if not any(v == i for v, _ in narrations)]
    assert no_reverse and int(mask[no_reverse].sum()) == 0


def _direction_task(first_of_pair: list[int] | None = None, branch: int = 4):
    from egovlpv2_edge import create_model
    from egovlpv2_edge.training.pretrain import LossConfig, PretrainTask

    torch.manual_seed(0)
    model = create_model("egovlpv2_test", video={"motion_branch": branch, "img_size": 32})
    loss = LossConfig(direction_weight=1.0, mlm_weight=0.0, vtm_weight=0.0)
    return PretrainTask(model, set(), 0, loss, 0, directional=[1, 2], first_of_pair=first_of_pair or [1])


def test_direction_term_labels_each_clip_by_its_verbs_place_in_the_pair() -> None:
    from egovlpv2_edge.training.losses import direction_loss

    task = _direction_task()
    video = torch.randn(4, 2, 3, 32, 32)
    verb = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])  # pair first, second, none, both (first wins)
    loss, acc = task._direction_term(video, verb)
    branch = task.model.video.motion
    x = video[[0, 1, 3]]
    logits = branch.direction_logits(torch.cat([x, x.flip(1)]))
    first = torch.tensor([1, 0, 1])
    assert loss.item() == pytest.approx(direction_loss(logits[:3], logits[3:], first).item() / 3, rel=1e-5)
    right = ((logits[:3] > 0).long() == first).sum() + ((logits[3:] > 0).long() != first).sum()
    assert acc.item() == pytest.approx(right.item() / 6)
    # gradients reach the branch's convolutions and its direction head, not its projection or the transformer
    loss.backward()
    assert branch.direction.weight.grad.abs().sum() > 0 and branch.convs[0].weight.grad.abs().sum() > 0
    assert task.model.motion_proj.weight.grad is None
    assert all(p.grad is None for p in task.model.video.blocks.parameters())
    # no directional clip: zero, and the branch still runs (an empty batch) so every process exchanges its gradients
    none, _ = task._direction_term(video, torch.tensor([[1, 0, 0]] * 4))
    assert none.item() == 0.0 and none.requires_grad


def test_direction_term_teaches_the_branch_which_way_a_square_moves() -> None:
    task = _direction_task()
    branch = task.model.video.motion
    opt = torch.optim.Adam(branch.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def clips(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        video = torch.zeros(n, 2, 3, 32, 32)
        verb = torch.zeros(n, 3, dtype=torch.long)
        for i in range(n):
            right = bool(i % 2)  # verb 1 moves the square right, its reverse (verb 2) left
            x0, y0 = int(torch.randint(4, 16, (1,), generator=gen)), int(torch.randint(0, 24, (1,), generator=gen))
            for f, x in enumerate((x0, x0 + 8) if right else (x0 + 8, x0)):
                video[i, f, :, y0 : y0 + 8, x : x + 8] = 1.0
            verb[i, 1 if right else 2] = 1
        return video, verb

    held = clips(32)
    before = task._direction_term(*held)[1].item()
    for _ in range(60):
        loss, _ = task._direction_term(*clips(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = task._direction_term(*held)[1].item()
    assert after >= 0.9 and after > before, (before, after)


def test_direction_term_needs_the_motion_branch() -> None:
    with pytest.raises(ValueError, match="model.video.motion_branch"):
        _direction_task(branch=0)


def test_cpu_teacher_recipe_sets_the_readme_recipe_and_yields_to_overrides(tmp_path) -> None:
    from egovlpv2_edge.training.cli import main as train_main
    from egovlpv2_edge.training.cli import recipe_file

    cfg = resolve(PretrainConfig, [recipe_file("cpu_teacher")], ["max_steps=3"])
    assert cfg.preset == "egovlpv2_small" and cfg.model == {"video": {"motion_branch": 16}}
    assert (cfg.optim.video_lr_mult, cfg.optim.text_lr_mult) == (5, 0)
    assert (cfg.loss.fusion_start, cfg.loss.reverse_weight, cfg.loss.direction_weight) == (0.75, 1, 1)
    assert cfg.max_steps == 3  # command-line pairs win over the recipe
    # a --config file merges over the recipe, key by key
    extra = tmp_path / "extra.json"
    extra.write_text('{"loss": {"reverse_weight": 2}}')
    cfg = resolve(PretrainConfig, [recipe_file("cpu_teacher"), extra])
    assert (cfg.loss.reverse_weight, cfg.loss.direction_weight, cfg.max_steps) == (2, 1, 1000)
    broken = tmp_path / "broken.json"
    broken.write_text('{"loss": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve(PretrainConfig, broken)
    with pytest.raises(ValueError, match="shipped recipes: cpu_teacher"):
        recipe_file("gpu_teacher")
    with pytest.raises(SystemExit):  # argparse names the choices
        train_main(["pretrain", "--recipe", "gpu_teacher"])

"""``egovlp train finetune`` and ``egovlp eval --task`` end to end on the tiny preset and a tiny dataset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egovlpv2_edge import create_model
from egovlpv2_edge.checkpoint import load_checkpoint, save_checkpoint
from egovlpv2_edge.training.cli import main as train_main
from egovlpv2_edge.training.data.qa import read_qa
from egovlpv2_edge.training.eval_cli import main as eval_main
from egovlpv2_edge.training.tasks.checkpoint import TaskCheckpointError, load_finetuned

COMMON = ["preset=egovlpv2_test", "batch_size=4", "num_workers=0", "threads=1", "log_every=1"]


def _finetune(task: str, data: Path, out: Path, init: Path, *extra: str) -> Path:
    args = ["finetune", "--task", task, "--init", str(init), f"data={data}", f"out={out}", *COMMON, *extra]
    assert train_main(args) == 0
    return out / "finetuned.pt"


def test_init_without_tokenizer_is_a_clear_cli_error(small_data, tmp_path, capsys) -> None:
    bare = tmp_path / "bare" / "teacher.pt"  # no tokenizer embedded and no tokenizer.json beside it
    bare.parent.mkdir()
    save_checkpoint(create_model("egovlpv2_test"), bare, step=0)
    args = ["finetune", "--task", "qa", "--init", str(bare), f"data={small_data}", f"out={tmp_path / 'qa'}", *COMMON]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "embeds no tokenizer" in err and "tokenizer.json" in err


def test_qa_finetune_run_outputs_and_checkpoint_vocab(small_data, pretrained, tmp_path, capsys) -> None:
    out = tmp_path / "qa"
    ckpt = _finetune("qa", small_data, out, pretrained, "max_steps=3")
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["task"] == "qa" and saved["config"]["init"] == str(pretrained) and "git_revision" in saved
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and {"loss", "qa", "mc", "lr"} <= set(rows[0])
    assert (out / "curves.png").stat().st_size > 1000
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain data: no pickled objects
    answers = list(read_qa(small_data / "qa.json").answer_set)
    assert raw["task"]["name"] == "qa" and raw["task"]["vocab"]["answers"] == answers
    assert raw["task"]["head_config"] == {"kind": "qa", "in_dim": 32, "num_answers": len(answers), "dropout": 0.2}
    dual = raw["task"]["dual_head"]  # the gates-off head, fitted on the final model's [video; text] embeddings
    n_train = sum(1 for q in read_qa(small_data / "qa.json").items if q.split == "train")
    assert dual["config"]["in_dim"] == 2 * 24 and dual["answers"] == answers and dual["questions"] == n_train
    assert 0.0 <= dual["train_accuracy"] <= 1.0
    from egovlpv2_edge.compress.export import checkpoint_dual_qa_head

    assert checkpoint_dual_qa_head(ckpt, 24).answers == tuple(answers)
    assert raw["tokenizer_json"]
    run = load_finetuned(ckpt, expect="qa")
    assert run.mode == "fusion" and run.head is not None
    assert run.head(torch.randn(2, 32)).shape == (2, len(answers))
    assert not load_checkpoint(create_model("egovlpv2_test"), ckpt).missing  # the backbone loads as before
    with pytest.raises(TaskCheckpointError, match="is a 'qa' checkpoint, not 'nlq'"):
        load_finetuned(ckpt, expect="nlq")
    capsys.readouterr()
    res = tmp_path / "qa.json"
    argv = ["--task", "qa", "--checkpoint", str(ckpt), "--data", str(small_data), "--probe-epochs", "2",
            "--shuffle-frames", "--json", str(res)]  # fmt: skip
    assert eval_main(argv) == 0
    text = capsys.readouterr().out
    for row in ("model (fusion head)", "model, shuffled frames", "answer prior (per type)",
                "same head on dual features", "gates-off head (dual embeddings)", "multiple choice: VTM score",
                "multiple choice: chance"):  # fmt: skip
        assert row in text
    table = json.loads(res.read_text())["rows"]
    n_choices = [len(q.choices) for q in read_qa(small_data / "qa.json").split("test")]
    chance = 100 * sum(1 / n for n in n_choices) / len(n_choices)  # count questions have four choices, others five
    assert table["multiple choice: chance"]["all"] == pytest.approx(chance)
    assert 0 <= table["model (fusion head)"]["all"] <= 100
    paired = json.loads(res.read_text())["paired"]  # model minus each baseline on the same questions
    rows = {"the model with shuffled frames": "model, shuffled frames", "answer prior": "answer prior (per type)",
            "same head on dual features": "same head on dual features",
            "gates-off head": "gates-off head (dual embeddings)"}  # fmt: skip
    assert set(paired) == set(rows) and "model head minus each baseline" in text
    for name, row in rows.items():
        for metric, (diff, half) in paired[name].items():
            assert diff == pytest.approx(table["model (fusion head)"][metric] - table[row][metric]) and half >= 0


def test_eval_device_errors_are_clear(small_data, pretrained, tmp_path, capsys) -> None:
    ckpt = _finetune("qa", small_data, tmp_path / "qa", pretrained, "max_steps=1")
    base = ["--checkpoint", str(ckpt), "--data", str(small_data), "--probe-epochs", "0"]
    capsys.readouterr()
    assert eval_main(["--task", "retrieval", *base, "--device", "auto"]) == 2
    assert "--device auto applies to --task qa only" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert eval_main(["--task", "qa", *base, "--device", "cuda"]) == 2
        assert "CUDA is not available; use --device cpu" in capsys.readouterr().err


@pytest.mark.gpu
def test_qa_eval_on_cuda_matches_cpu(small_data, pretrained, tmp_path) -> None:
    ckpt = _finetune("qa", small_data, tmp_path / "qa", pretrained, "max_steps=2")
    tables = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        argv = ["--task", "qa", "--checkpoint", str(ckpt), "--data", str(small_data), "--probe-epochs", "0",
                "--shuffle-frames", "--device", device, "--json", str(out)]  # fmt: skip
        assert eval_main(argv) == 0
        tables[device] = json.loads(out.read_text())["rows"]
    n = len(read_qa(small_data / "qa.json").split("test"))
    for row in ("model (fusion head)", "model, shuffled frames", "multiple choice: VTM score"):
        assert tables["cuda"][row]["all"] == pytest.approx(tables["cpu"][row]["all"], abs=100 / n + 1e-6)


def test_qa_train_fusion_keeps_the_dual_encoders(small_data, pretrained, tmp_path, capsys) -> None:
    from egovlpv2_edge.training.tasks.qa import CROSS_MODAL_PREFIXES

    ckpt = _finetune("qa", small_data, tmp_path / "qa", pretrained, "max_steps=3", "qa.train=fusion",
                     "qa.video_cross_scale=4")  # fmt: skip
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(ckpt, weights_only=True)
    cross = [k for k in before if ".cross." in k or k.startswith(CROSS_MODAL_PREFIXES)]
    fusion_stream = [*cross, "fusion_cls_token"]  # qa.fusion_from_dual starts that token from the dual one
    assert cross and all(torch.equal(before[k], after["model"][k]) for k in before if k not in fusion_stream)
    assert any(not torch.equal(before[k], after["model"][k]) for k in cross if before[k].is_floating_point())
    assert torch.equal(after["model"]["fusion_cls_token"], before["video.cls_token"])
    proj = [k for k in before if k.startswith("video.blocks.") and k.endswith(".cross.proj.weight")]
    assert proj and all(torch.allclose(after["model"][k], 4 * before[k], atol=5e-3) for k in proj)  # 3 steps on x4
    assert after["task"]["params"]["train"] == "fusion"
    err = capsys.readouterr().err
    assert "QA clip tokens" in err  # computed once, before the steps
    assert "QA head warm start" in err  # the answer head is fitted on them before fine-tuning
    for extra, msg in ((["qa.train=lower"], "qa.train='lower'; valid: all"),
                       (["qa.train=fusion", "qa.mode=dual"], "which qa.mode=dual never runs")):  # fmt: skip
        args = ["finetune", "--task", "qa", "--init", str(pretrained), f"data={small_data}", *COMMON, *extra]
        assert train_main(args) == 2 and msg in capsys.readouterr().err


def test_qa_finetune_on_more_frames_than_pre_training(small_data, pretrained, tmp_path, capsys) -> None:
    ckpt = _finetune("qa", small_data, tmp_path / "qa", pretrained, "max_steps=2", "frames=4")  # pre-trained on 2
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["config"]["video"]["num_frames"] == 4 and raw["model"]["video.temporal_embed"].shape[1] == 4
    run = load_finetuned(ckpt, expect="qa")
    assert run.model.cfg.video.num_frames == 4
    capsys.readouterr()
    assert eval_main(["--task", "qa", "--checkpoint", str(ckpt), "--data", str(small_data)]) == 0  # reads 4 frames
    assert "model (fusion head)" in capsys.readouterr().out


def test_retrieval_zero_shot_row_reads_the_fine_tuned_frame_count(small_data, pretrained, tmp_path,
                                                                   monkeypatch) -> None:  # fmt: skip
    from egovlpv2_edge.training.tasks import evaluate as ev

    ckpt = _finetune("retrieval", small_data, tmp_path / "ret", pretrained, "max_steps=1", "frames=3")
    frames = []
    real = ev.retrieval_metrics
    monkeypatch.setattr(ev, "retrieval_metrics", lambda model, *a, **k: frames.append(model.cfg.video.num_frames)
                        or real(model, *a, **k))  # fmt: skip
    table = ev.evaluate_retrieval(load_finetuned(ckpt), small_data)
    assert [name for name, _ in table.rows] == ["fine-tuned (dual)", "pre-trained, zero-shot", "random scores"]
    assert frames == [3, 3, 3]  # the pre-trained model (2 frames) is scored on 3 frames, as the fine-tuned one


def test_retrieval_finetune_and_eval_against_zero_shot(small_data, pretrained, tmp_path, capsys) -> None:
    ckpt = _finetune("retrieval", small_data, tmp_path / "ret", pretrained, "max_steps=2")
    assert load_finetuned(ckpt).task == "retrieval"
    capsys.readouterr()
    assert eval_main(["--task", "retrieval", "--checkpoint", str(ckpt), "--data", str(small_data)]) == 0
    text = capsys.readouterr().out
    assert "fine-tuned (dual)" in text and "pre-trained, zero-shot" in text and "random scores" in text
    assert "mAP t2v" in text and "nDCG v2t" in text


def test_retrieval_finetune_with_the_text_backbone_locked(small_data, pretrained, tmp_path) -> None:
    from egovlpv2_edge.training.optim import is_text_backbone

    ckpt = _finetune("retrieval", small_data, tmp_path / "ret", pretrained, "max_steps=2", "optim.text_lr_mult=0")
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(ckpt, weights_only=True)["model"]
    text = [k for k in before if is_text_backbone(k)]
    assert text and all(torch.equal(before[k], after[k]) for k in text)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("video."))


def test_nlq_finetune_trains_only_the_head_and_evaluates(small_data, pretrained, tmp_path, capsys) -> None:
    ckpt = _finetune("nlq", small_data, tmp_path / "nlq", pretrained, "max_steps=3", "nlq.hidden=16",
                     "nlq.fused_features=true", "nlq.query_tokens=true")  # fmt: skip
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(before[k], after["model"][k]) for k in before)  # frozen backbone
    assert after["task"]["head_config"]["kind"] == "span" and after["task"]["params"]["window_s"] == 2.0
    assert after["task"]["mode"] == "fusion"
    assert after["task"]["head_config"]["text_dim"] > 0 and after["task"]["head_config"]["use_sim"]  # reads the query
    assert after["task"]["head_config"]["sim_prior"] == 3.0 and after["task"]["params"]["max_windows"] >= 1
    capsys.readouterr()
    assert eval_main(["--task", "nlq", "--checkpoint", str(ckpt), "--data", str(small_data), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "R@1 IoU=0.3" in text and "R@5 IoU=0.5" in text and "fixed" in text and "dual similarity" in text
    assert "the head untrained (similarity prior)" in text
    assert "span head (fused features + query + similarity)" in text


def test_nlq_head_by_default_skips_the_fused_pass(small_data, pretrained, tmp_path, capsys, monkeypatch) -> None:
    from egovlpv2_edge.training.tasks import nlq

    fused_calls = []
    real = nlq.query_features
    monkeypatch.setattr(nlq, "query_features", lambda *a, **k: fused_calls.append(1) or real(*a, **k))
    ckpt = _finetune("nlq", small_data, tmp_path / "nlq", pretrained, "max_steps=3", "nlq.hidden=16")  # defaults
    task = torch.load(ckpt, weights_only=True)["task"]
    head = task["head_config"]
    assert head["in_dim"] == 0 and head["text_dim"] == 0 and head["use_sim"]
    assert task["mode"] == "dual"  # it reads dual-mode similarities only
    capsys.readouterr()
    assert eval_main(["--task", "nlq", "--checkpoint", str(ckpt), "--data", str(small_data), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "span head (similarity)" in out and "span head minus each baseline" in out
    assert not fused_calls  # neither fine-tuning nor evaluation ran the fused layers


def test_zeroshot_and_egomcq_evals(small_data, pretrained, capsys) -> None:
    assert eval_main(["--task", "zeroshot", "--checkpoint", str(pretrained), "--data", str(small_data)]) == 0
    text = capsys.readouterr().out
    assert "model (dual, class prompts)" in text and "chance (random scores)" in text
    assert eval_main(["--task", "zeroshot", "--checkpoint", str(pretrained), "--data", str(small_data),
                      "--classes", "verb"]) == 0  # fmt: skip
    # the existing EgoMCQ command keeps working
    assert eval_main(["egomcq", "--checkpoint", str(pretrained), "--data", str(small_data), "--limit", "4"]) == 0
    assert "EgoMCQ" in capsys.readouterr().out


def test_egomcq_shuffled_control_is_paired_with_the_in_order_run(small_data, pretrained, tmp_path, capsys) -> None:
    plain, both = tmp_path / "plain.json", tmp_path / "both.json"
    base = ["egomcq", "--checkpoint", str(pretrained), "--data", str(small_data), "--limit", "4", "--json"]
    assert eval_main([*base, str(plain)]) == 0
    assert eval_main([*base, str(both), "--shuffle-frames", "--reverse-frames"]) == 0
    out = capsys.readouterr().out
    assert "frames shuffled; drop" in out and "frames reversed (played backwards); drop" in out
    p, b = json.loads(plain.read_text()), json.loads(both.read_text())
    assert b["egomcq"] == p["egomcq"]  # the in-order column is the plain run
    counts = b["counts"]  # the questions decided by the order of the frames are a subset of the intra ones
    assert set(counts) == {"inter", "intra", "intra_reverse"} and 0 <= counts["intra_reverse"] <= counts["intra"]
    assert "shuffled" not in p and "reversed" not in p
    for control in ("shuffled", "reversed"):
        assert set(b[control]) == {"dual", "fusion", "ensemble"}
        for scoring, kinds in b[f"{control}_drop"].items():
            for kind, d in kinds.items():
                assert d["drop"] == pytest.approx(b["egomcq"][scoring][kind] - b[control][scoring][kind])
                assert d["ci95"] >= 0


def test_finetune_cli_errors_are_clear(small_data, tmp_path, capsys) -> None:
    assert train_main(["finetune", "--task", "qa", "--init", str(tmp_path / "none.pt"), f"data={small_data}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_main(["finetune", "--task", "qa", "bogus_key=1"]) == 2
    assert "unknown key(s) ['bogus_key']" in capsys.readouterr().err


class _DirectionModel(torch.nn.Module):
    """Reads a clip's motion direction perfectly: knows each clip's verb by its frames, and the reverse verb when the
    frames are played backwards; texts embed as +1 for the lower id of a reverse pair and -1 for the higher."""

    def __init__(self, data: Path) -> None:
        super().__init__()
        from egovlpv2_edge.training.data.dataset import EgoClipDataset
        from egovlpv2_edge.training.data.taxonomy import read_verbs

        self.cfg = create_model("egovlpv2_test").cfg
        verbs = read_verbs(data / "verbs.csv")
        ids = {v["key"]: int(v["id"]) for v in verbs}
        pattern = {v["key"]: re.compile("#C C " + re.escape(v["text"]).replace(re.escape("{n}"), ".+")) for v in verbs}
        self.sign = {pattern[v["key"]]: (1.0 if int(v["id"]) < ids[v["reverse"]] else -1.0)
                     for v in verbs if v["reverse"]}  # fmt: skip
        v = self.cfg.video
        ds = EgoClipDataset(data / "egoclip.csv", data / "videos", v.num_frames, v.img_size, split="test", mode="eval")
        self.clip_sign = {}
        for item in ds:
            verb = verbs[int(item["verb"].argmax())]
            if verb["reverse"]:
                s = 1.0 if int(verb["id"]) < ids[verb["reverse"]] else -1.0
                self.clip_sign[item["video"].numpy().tobytes()] = s
                self.clip_sign[item["video"].flip(0).numpy().tobytes()] = -s
        self.texts: list[str] = []

    def encode_video(self, frames: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return torch.tensor([[self.clip_sign[f.numpy().tobytes()]] for f in frames])

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        texts, self.texts = self.texts, []
        return torch.tensor([[next(s for p, s in self.sign.items() if p.fullmatch(t))] for t in texts])


def test_order_pairs_score_direction_by_hand(small_data, pretrained) -> None:
    from egovlpv2_edge.training.eval_cli import load_run
    from egovlpv2_edge.training.evaluate import evaluate_order_pairs

    _, tok = load_run(pretrained)
    model = _DirectionModel(small_data)

    class _Tok:  # records the texts so the stand-in text encoder can read their verbs
        def encode(self, texts, max_length):
            model.texts = list(texts)
            return tok.encode(texts, max_length=max_length)

    res = evaluate_order_pairs(model, _Tok(), small_data, split="test")
    assert res.clips > 0
    assert (res.in_order, res.reversed) == (100.0, 0.0)  # reads direction: right in order, wrong played backwards
    assert res.drop == (100.0, 0.0)  # every clip flips: the paired differences have no spread
    model.encode_video = lambda frames, normalize=True: torch.ones(len(frames), 1)  # blind to the clip
    blind = evaluate_order_pairs(model, _Tok(), small_data, split="test")
    assert blind.in_order == blind.reversed and blind.drop == (0.0, 0.0)  # blind to the frames: no difference


@pytest.mark.parametrize(
    "task, extra",
    [
        ("qa", ["qa.dropout=0.0"]),
        ("qa", ["qa.dropout=0.0", "qa.train=fusion"]),  # clip tokens computed once, shared between the processes
        ("retrieval", []),
        ("nlq", ["nlq.dropout=0.0", "nlq.max_queries=16"]),
    ],
)
def test_two_process_torchrun_finetune_matches_one_process(task, extra, small_data, pretrained, tmp_path) -> None:
    # the tiny preset has no dropout; the heads' dropout is turned off so both runs compute the same thing
    args = ["finetune", "--task", task, "--init", str(pretrained), f"data={small_data}", *COMMON, "max_steps=3",
            "num_workers=0", *extra]  # fmt: skip
    assert train_main(args + [f"out={tmp_path / 'one'}"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "egovlpv2_edge.training.cli", *args, f"out={tmp_path / 'two'}"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [[json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("one", "two")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [1, 2, 3]
    for a, b in zip(*rows, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (task, a, b)
    if task == "nlq":
        return  # the backbone is frozen; the losses above already follow the head's updates
    init = torch.load(pretrained, weights_only=False)["model"]
    one, two = (torch.load(tmp_path / r / "finetuned.pt", weights_only=False)["model"] for r in ("one", "two"))
    keys = [k for k in init if init[k].is_floating_point()]
    moved = sum(float((one[k] - init[k]).square().sum()) for k in keys) ** 0.5  # how far one process's run went
    apart = sum(float((one[k] - two[k]).square().sum()) for k in keys) ** 0.5
    # the same updates up to float noise (which Adam magnifies on near-zero gradients): gradients were combined
    assert moved > 0 and apart <= 0.01 * moved, (task, moved, apart)

"""Can a part of the model learn what pre-training asks of it, given direct supervision and a few hundred steps?

    python benchmarks/probe_learnability.py direction --data DATA [--checkpoint CKPT | --preset egovlpv2_small]
        [--steps 300] [--lr 2e-4] [--batch 32] [--cnn | --motion-branch C | --branch-head]
    python benchmarks/probe_learnability.py vtm --data DATA --checkpoint CKPT [--steps 200] [--lr 1e-4]
        [--cross-lr-mult 4] [--video-lr-mult 5] [--standardize] [--negatives random|hard]
    python benchmarks/probe_learnability.py qa --data DATA --checkpoint CKPT [--epochs 6] [--head-epochs 60]

``direction``: the video encoder (the checkpoint's, or a fresh one of ``--preset``) plus a linear head, trained to
tell which verb of its reverse pair in the taxonomy (pick up / put down, open / close, ...) a clip shows, on the
training clips whose verb has one and on the same clips played backwards (a pick up played backwards shows a put
down); each batch holds both. ``--cnn`` trains a three-layer 3D CNN (``MotionBranch`` at 32 channels, with a
linear head of its own) on the same clips instead, as a reference for how learnable the signal is;
``--motion-branch C`` gives the fresh model ``video.motion_branch=C`` (three such
convolutions, added to its embedding); ``--branch-head`` reads (and trains) the motion branch's own direction head
instead of a new head on the embedding, so ``--checkpoint CKPT --steps 0`` scores what pre-training's direction
term (``loss.direction_weight``) taught it on held-out clips. ``vtm``: the checkpoint's fused layers and VTM head
trained on VTM alone (half matched pairs, half negatives: random clips of another action, or, with ``--negatives
hard``, sampled from the dual similarity as pre-training does), with the text backbone locked as in the CPU recipe;
``--video-lr-mult 0`` locks the video backbone too and ``--standardize`` starts the VTM poolers from the training
pairs' statistics. Both print held-out accuracy (chance 50%) as they go and a table at the end. Clips are decoded
once, with the eval transform.

``qa``: how much of the QA split the checkpoint's frozen features can answer, read three ways and fitted from
scratch on the QA train questions: the QA head on the unfused ``[video CLS; text]`` features, the same head on the
dual embeddings, and a question-conditioned reader (a small two-layer Transformer over the final unfused video
tokens of the clip and the question's final text tokens, ``--epochs`` passes): what cross-attention over these
tokens could read at best without changing them. It prints each one's test accuracy per question type, with the
frames in order and shuffled, beside the answer prior.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egovlpv2_edge.model import EgoVLPv2, create_model
from egovlpv2_edge.model.video import MotionBranch
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.data.dataset import EgoClipDataset
from egovlpv2_edge.training.data.taxonomy import reverse_verbs
from egovlpv2_edge.training.optim import is_fused_only

HELD_OUT = ("val", "test")  # held-out clips come from these splits, in this order


def _clips(data: Path, splits: tuple[str, ...], frames: int, size: int, limit: int, directional: bool,
           seed: int = 0) -> dict:  # fmt: skip
    """Up to ``limit`` clips of the splits (only those whose verb has a reverse when ``directional``)."""
    recs, videos = [], []
    for split in splits:
        ds = EgoClipDataset(data / "egoclip.csv", data / "videos", frames, size, split=split, mode="eval")
        keep = set(ds.directional)
        for i in np.random.default_rng(seed).permutation(len(ds)):
            if len(recs) < limit and (not directional or keep & set(ds.records[i].tag_verb)):
                recs.append(ds.records[i])
                videos.append(ds[int(i)]["video"])
    if len(recs) < 2:
        raise SystemExit(f"probe: only {len(recs)} usable {'/'.join(splits)} clips in {data}; generate more videos")
    return {"video": torch.stack(videos), "text": [r.clip_text for r in recs],
            "key": [(tuple(r.tag_verb), r.tag_noun[:1]) for r in recs]}  # fmt: skip


def _second_of_pair(data: Path) -> set[int]:
    """Verb ids listed after their reverse in ``verbs.csv`` (put down for pick up / put down)."""
    return {verb for verb, rev in reverse_verbs(data).items() if int(rev["id"]) < verb}


def _as_first_verb(clips: dict, second: set[int]) -> torch.Tensor:
    """The clips, those of a pair's second verb played backwards: every one then shows its pair's first verb."""
    video = clips["video"].clone()
    flip = torch.tensor([verbs[0] in second for verbs, _ in clips["key"]])
    video[flip] = video[flip].flip(1)
    return video


def _model(args: argparse.Namespace) -> tuple[EgoVLPv2, Tokenizer | None]:
    """The checkpoint's model (its config and tokenizer read from it), else a fresh ``--preset`` model."""
    if args.checkpoint is None:
        extra = {"video": {"motion_branch": args.motion_branch}} if args.motion_branch is not None else {}
        return create_model(args.preset, **extra), None
    if args.motion_branch is not None:
        raise SystemExit("probe: --motion-branch builds a fresh model; leave out --checkpoint")
    from egovlpv2_edge.training.tasks.checkpoint import load_backbone

    return load_backbone(args.checkpoint)


def _direction(args: argparse.Namespace) -> list[tuple[int, float, float, float]]:
    if args.cnn:  # the motion branch's convolutions at 32 channels, with a linear head of their own
        cnn = MotionBranch(32)
        frames, size = args.frames, args.size
        net: nn.Module = cnn

        def score(x: torch.Tensor) -> torch.Tensor:
            return cnn.direction_logits(x)
    elif args.branch_head:  # the motion branch's own direction head (what loss.direction_weight trains)
        model = _model(args)[0].train()
        if model.video.motion is None:
            raise SystemExit("probe: --branch-head needs a model with video.motion_branch")
        frames, size = model.cfg.video.num_frames, model.cfg.video.img_size
        branch = model.video.motion
        net = branch

        def score(x: torch.Tensor) -> torch.Tensor:
            return branch.direction_logits(x)
    else:
        model = _model(args)[0].train()
        frames, size = model.cfg.video.num_frames, model.cfg.video.img_size
        head = nn.Linear(model.cfg.heads.embed_dim, 1)
        net = nn.ModuleDict({"model": model, "head": head})

        def score(x: torch.Tensor) -> torch.Tensor:
            return head(model.encode_video(x)).squeeze(-1)

    second = _second_of_pair(args.data)  # label 1: the clip shows the first verb of its pair (pick up, open, ...)
    train = _as_first_verb(_clips(args.data, ("train",), frames, size, args.max_clips, True), second)
    held = _as_first_verb(_clips(args.data, HELD_OUT, frames, size, args.max_clips // 4, True), second)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    @torch.no_grad()
    def accuracy(x: torch.Tensor) -> float:
        net.eval()
        right = torch.cat([score(x) > 0, score(x.flip(1)) < 0]).float().mean()
        net.train()
        return float(right)

    rows, loss = [], float("nan")
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            rows.append((step, loss, accuracy(train[: len(held)]), accuracy(held)))
            print(f"step {step}: loss {loss:.3f}, train {rows[-1][2]:.3f}, held-out {rows[-1][3]:.3f}", flush=True)
        if step == args.steps:
            break
        x = train[torch.randint(len(train), (args.batch,), generator=gen)]
        y = torch.cat([torch.ones(len(x)), torch.zeros(len(x))])
        out = F.binary_cross_entropy_with_logits(score(torch.cat([x, x.flip(1)])), y)
        opt.zero_grad()
        out.backward()
        opt.step()
        loss = float(out.detach())
    return rows


def _vtm(args: argparse.Namespace) -> list[tuple[int, float, float, float]]:
    if args.checkpoint is None:
        raise SystemExit("probe vtm: pass --checkpoint (a pre-trained teacher)")
    model, tok = _model(args)
    model.train()
    v = model.cfg.video
    train = _clips(args.data, ("train",), v.num_frames, v.img_size, args.max_clips, False)
    held = _clips(args.data, HELD_OUT, v.num_frames, v.img_size, args.max_clips // 4, False, seed=1)
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "cross": []}
    for name, p in model.named_parameters():
        cross = is_fused_only(name)
        if not cross and (name.startswith("text.") or args.video_lr_mult == 0):
            p.requires_grad_(False)  # the CPU recipe's locked text backbone (its cross-attention still trains)
        elif p.requires_grad:
            groups["cross" if cross else "backbone"].append(p)
    opt = torch.optim.AdamW([{"params": groups["backbone"], "lr": args.lr * args.video_lr_mult},
                             {"params": groups["cross"], "lr": args.lr * args.cross_lr_mult}])  # fmt: skip

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        b = tok.encode(texts, max_length=model.cfg.text.max_length)  # type: ignore[union-attr]
        return torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)

    def pairs(data: dict, idx: torch.Tensor, hard: bool, gen: torch.Generator) -> tuple:
        n = len(idx)
        label = torch.zeros(n, dtype=torch.long)
        label[torch.randperm(n, generator=gen)[: n // 2]] = 1
        video_idx = idx.clone()
        ids, mask = encode([data["text"][int(i)] for i in idx])
        if hard:
            with torch.no_grad():
                sim = (
                    model.encode_text(ids, mask, normalize=True)
                    @ model.encode_video(data["video"][idx], normalize=True).T
                )
        for k in torch.nonzero(label == 0).flatten().tolist():
            same = torch.tensor([data["key"][int(j)] == data["key"][int(idx[k])] for j in idx])  # EgoNCE positives
            w = torch.softmax(sim[k] / model.temperature, 0).masked_fill(same, 0.0) if hard else (~same).float()
            if w.sum() <= 0:
                w = torch.ones(n).index_fill_(0, torch.tensor([k]), 0.0)
            video_idx[k] = idx[int(torch.multinomial(w, 1, generator=gen))]
        return data["video"][video_idx], ids, mask, label

    @torch.no_grad()
    def accuracy(hard: bool) -> float:
        model.eval()
        gen, right, total = torch.Generator().manual_seed(1), 0, 0
        for s in range(0, len(held["text"]) - 1, 64):
            x, ids, mask, y = pairs(held, torch.arange(s, min(s + 64, len(held["text"]))), hard, gen)
            right += int((model.forward_fusion(x, ids, mask).vtm_logits.argmax(-1) == y).sum())
            total += len(y)
        model.train()
        return right / max(total, 1)

    gen = torch.Generator().manual_seed(args.seed)
    if args.standardize:  # the VTM poolers start from 256 training pairs' statistics (loss.vtm_standardize)
        with torch.no_grad():
            x, ids, mask, _ = pairs(train, torch.randint(len(train["text"]), (256,), generator=gen), False, gen)
            out = model.forward_fusion(x, ids, mask)
            model.heads.standardize_poolers(out.video_cls, out.text_tokens)
    rows, loss = [], float("nan")
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            rows.append((step, loss, accuracy(False), accuracy(True)))
            gates = [round(float(g.detach()), 3) for g in model.gates()]
            print(f"step {step}: loss {loss:.3f}, held-out random pairs {rows[-1][2]:.3f}, hard pairs "
                  f"{rows[-1][3]:.3f}, gates {gates}", flush=True)  # fmt: skip
        if step == args.steps:
            break
        idx = torch.randint(len(train["text"]), (args.batch,), generator=gen)
        x, ids, mask, y = pairs(train, idx, args.negatives == "hard", gen)
        out = F.cross_entropy(model.forward_fusion(x, ids, mask).vtm_logits, y)
        opt.zero_grad()
        out.backward()
        opt.step()
        loss = float(out.detach())
    return rows


class _Reader(nn.Module):
    """A from-scratch Transformer over ``[CLS; video tokens; question tokens]``; answer logits from its CLS."""

    def __init__(self, video_width: int, text_width: int, tokens: int, answers: int, width: int = 128) -> None:
        super().__init__()
        self.video, self.text = nn.Linear(video_width, width), nn.Linear(text_width, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens, width))
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, 0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, answers))

    def forward(self, video: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T = video.shape[:2]
        x = torch.cat([self.cls.expand(B, -1, -1), self.video(video), self.text(text)], 1)
        pad = torch.cat([torch.zeros(B, 1 + T, dtype=torch.bool), mask == 0], 1)
        return self.out(self.encoder(x + self.pos[:, : x.shape[1]], src_key_padding_mask=pad)[:, 0])


def _qa_tokens(model: EgoVLPv2, tok: Tokenizer, ds, length: int, shuffle: bool) -> dict:  # noqa: ANN001
    """Final unfused video tokens per window (each encoded once) and the questions' final text tokens."""
    from egovlpv2_edge.training.tasks.qa import qa_parts

    video, of, text, mask = qa_parts(
        model, tok, ds, length, lambda m, v: m.video_upper_tokens(m.video_lower(v, "dual")).half(),
        lambda m, i, k: m.text_upper_tokens(m.text_lower(i, k), k).half(), shuffle,
    )  # fmt: skip
    return {"video": video, "of": of, "text": text, "mask": mask}


def _qa(args: argparse.Namespace) -> None:
    from egovlpv2_edge.training.data.qa import QADataset, read_qa
    from egovlpv2_edge.training.tasks._setup import read_meta
    from egovlpv2_edge.training.tasks.evaluate import answer_prior
    from egovlpv2_edge.training.tasks.heads import QAHead, fit_qa_head
    from egovlpv2_edge.training.tasks.qa import qa_feature_set, qa_text_length

    if args.checkpoint is None:
        raise SystemExit("probe qa: --checkpoint is required")
    model, tok = _model(args)
    v, qa = model.cfg.video, read_qa(args.data / "qa.json")
    length = qa_text_length(model)
    sets = {s: QADataset(qa, args.data / "videos", s, v.num_frames, v.img_size, "eval", read_meta(args.data))
            for s in ("train", "test")}  # fmt: skip
    y = {s: torch.tensor([d.fields(i)["answer"] for i in range(len(d))]) for s, d in sets.items()}
    types = np.array([q.type for q in sets["test"].items])
    rows: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    prior = answer_prior(y["train"].tolist(), [q.type for q in sets["train"].items])
    rows.append(("answer prior (per type)", np.array([prior[t] for t in types]), None))
    for kind, name in (("dual", "QA head on [video CLS; text]"), ("embedding", "QA head on the dual embeddings")):
        x = {s: qa_feature_set(model, tok, d, length, kind) for s, d in sets.items()}
        x_shuffled = qa_feature_set(model, tok, sets["test"], length, kind, shuffle_frames=True)
        torch.manual_seed(args.seed)
        head = QAHead(x["train"].shape[1], len(qa.answer_set), 0.2)
        fit_qa_head(head, x["train"], y["train"], args.head_epochs, seed=args.seed)
        with torch.no_grad():
            rows.append((name, head.eval()(x["test"]).argmax(-1).numpy(), head(x_shuffled).argmax(-1).numpy()))
    tr, te = _qa_tokens(model, tok, sets["train"], length, False), _qa_tokens(model, tok, sets["test"], length, False)
    te_shuffled = _qa_tokens(model, tok, sets["test"], length, True)
    vm, vs = tr["video"].float().mean((0, 1)), tr["video"].float().std((0, 1)) + 1e-6
    tm, ts = tr["text"].float().mean((0, 1)), tr["text"].float().std((0, 1)) + 1e-6
    torch.manual_seed(args.seed)
    reader = _Reader(v.width, model.cfg.text.width, 1 + tr["video"].shape[1] + length, len(qa.answer_set))

    def logits(d: dict, idx: torch.Tensor) -> torch.Tensor:
        video = (d["video"][d["of"][idx]].float() - vm) / vs
        return reader(video, (d["text"][idx].float() - tm) / ts, d["mask"][idx])

    steps = args.epochs * -(-len(y["train"]) // 64)
    opt = torch.optim.AdamW(reader.parameters(), lr=5e-4, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-4, total_steps=max(steps, 1), pct_start=0.1)
    for epoch in range(args.epochs):
        reader.train()
        for idx in torch.randperm(len(y["train"])).split(64):
            loss = F.cross_entropy(logits(tr, idx), y["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"qa probe: reader epoch {epoch + 1}/{args.epochs}, loss {float(loss.detach()):.3f}", flush=True)
    reader.eval()
    with torch.no_grad():
        pred = [torch.cat([logits(d, i).argmax(-1) for i in torch.arange(len(types)).split(256)]).numpy()
                for d in (te, te_shuffled)]  # fmt: skip
    rows.append(("reader over video and question tokens", pred[0], pred[1]))
    answer = y["test"].numpy()
    kinds = sorted(set(types))
    print(f"\nqa probe, {args.checkpoint}, {len(answer)} test questions (train {len(y['train'])}), accuracy %")
    print(f"| features | all | {' | '.join(kinds)} | all, frames shuffled |")
    print("|---|" + "---|" * (len(kinds) + 2))
    for name, p, shuffled in rows:
        cells = [100 * (p == answer).mean()] + [100 * (p[types == k] == answer[types == k]).mean() for k in kinds]
        last = "-" if shuffled is None else f"{100 * (shuffled == answer).mean():.1f}"
        print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {last} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=("direction", "vtm", "qa"))
    p.add_argument("--data", type=Path, required=True, help="an `egovlp data synth` dataset")
    p.add_argument("--checkpoint", type=Path, default=None, help="start from this checkpoint (vtm: required)")
    p.add_argument("--preset", default="egovlpv2_small", help="without --checkpoint: a fresh model of this preset")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50, help="evaluate every N steps (default %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="clips (direction: and their reversals) per step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--cross-lr-mult", type=float, default=4.0, help="vtm: rate multiplier of cross-modal parameters")
    p.add_argument(
        "--video-lr-mult",
        type=float,
        default=5.0,
        help="vtm: rate multiplier of the video backbone (0 locks it; default %(default)s)",
    )
    p.add_argument(
        "--standardize",
        action="store_true",
        help="vtm: start the VTM poolers from the training pairs' statistics (loss.vtm_standardize)",
    )
    p.add_argument("--negatives", choices=("random", "hard"), default="random", help="vtm: negative pairs")
    p.add_argument("--cnn", action="store_true", help="direction: a 3D CNN instead of the model's video encoder")
    p.add_argument(
        "--branch-head",
        action="store_true",
        help="direction: read the motion branch's own direction head (--steps 0 scores a checkpoint as trained)",
    )
    p.add_argument(
        "--motion-branch",
        type=int,
        default=None,
        help="direction, fresh model: video.motion_branch channels (0 none; default: the preset's)",
    )
    p.add_argument("--frames", type=int, default=4, help="direction --cnn: frames per clip")
    p.add_argument("--size", type=int, default=64, help="direction --cnn: frame side")
    p.add_argument("--max-clips", type=int, default=1600, help="training clips decoded (held-out: a quarter)")
    p.add_argument("--epochs", type=int, default=6, help="qa: passes of the reader over the train questions")
    p.add_argument("--head-epochs", type=int, default=60, help="qa: epochs of each QA head")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.probe == "qa":
        _qa(args)
        print(f"({time.perf_counter() - t0:.0f} s)")
        return 0
    rows = (_direction if args.probe == "direction" else _vtm)(args)
    what = "the 3D CNN" if args.cnn else str(args.checkpoint or f"a fresh {args.preset}")
    what += ", the motion branch's direction head" if args.branch_head else ""
    cols = ("train", "held-out") if args.probe == "direction" else ("held-out random", "held-out hard")
    print(f"\n{args.probe} probe, {what}, {args.steps} steps, {time.perf_counter() - t0:.0f} s (chance 0.5)")
    print(f"| step | loss | {cols[0]} | {cols[1]} |\n|---|---|---|---|")
    for step, loss, a, b in rows:
        print(f"| {step} | {loss:.3f} | {a:.3f} | {b:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

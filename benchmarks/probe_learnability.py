"""Can a part of the model learn what pre-training asks of it, given direct supervision and a few hundred steps?

    python benchmarks/probe_learnability.py direction --data DATA [--checkpoint CKPT | --preset egovlpv2_small]
        [--steps 300] [--lr 2e-4] [--batch 32] [--cnn | --motion-branch C | --branch-head]
    python benchmarks/probe_learnability.py vtm --data DATA --checkpoint CKPT [--steps 200] [--lr 1e-4]
        [--cross-lr-mult 4] [--video-lr-mult 5] [--standardize] [--negatives random|hard]

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=("direction", "vtm"))
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
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
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

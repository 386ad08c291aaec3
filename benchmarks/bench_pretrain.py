"""Pre-training throughput on this machine: data loading vs training, side by side in one run.

    python benchmarks/bench_pretrain.py --data data/synth [--preset egovlpv2_small] [--batch-size 16]

Prints a table: data-loading clips/s (decode + train transform, scene negatives included) for 0/1/2 loader
workers, training clips/s for the preset with the paper's settings (three passes: dual, fused MLM, fused VTM;
forward, backward and AdamW) and for the CPU teacher recipe (``--recipe cpu_teacher``: motion branch, text encoder
locked, time-reversal and direction terms) in each of its phases (dual only, then with the fused losses), the fp32
GEMM peak of this CPU (2048^3, best of 10, torch threads as set) and how much of it the video encoder
forward reaches (FLOPs counted by torch's FlopCounterMode, attention included, best of 3).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from egovlpv2_edge import create_model
from egovlpv2_edge.model.stats import count_macs
from egovlpv2_edge.runconfig import resolve
from egovlpv2_edge.training.cli import recipe_file
from egovlpv2_edge.training.data.dataset import EgoClipDataset, collate
from egovlpv2_edge.training.data.taxonomy import first_of_pairs
from egovlpv2_edge.training.optim import build_optimizer
from egovlpv2_edge.training.pretrain import LossConfig, PretrainTask
from egovlpv2_edge.training.trainer import OptimConfig, PretrainConfig


def gemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` fp32 GEMM rate (GFLOP/s) after two warm-up calls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def loading_clips_per_s(data: str, size: int, frames: int, batch: int, workers: int, batches: int = 6) -> float:
    ds = EgoClipDataset(f"{data}/egoclip.csv", f"{data}/videos", frames, size, split="train", scene_negatives=True)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, collate_fn=collate, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up
    t0, clips = time.perf_counter(), 0
    for _ in range(batches):
        clips += next(it)["video"].shape[0]
    return clips / (time.perf_counter() - t0)


def _batch(model: torch.nn.Module, n: int, n_verbs: int, n_nouns: int) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    video = torch.randn(n, cfg.video.num_frames, 3, cfg.video.img_size, cfg.video.img_size)
    ids = torch.randint(5, cfg.text.vocab_size, (n, cfg.text.max_length))
    verb = torch.nn.functional.one_hot(torch.randint(0, n_verbs, (n,)), n_verbs).float()
    noun = torch.nn.functional.one_hot(torch.randint(0, n_nouns, (n,)), n_nouns).float()
    return video, ids, torch.ones_like(ids), verb, noun


def _step_seconds(task: PretrainTask, opt: torch.optim.Optimizer, batch: tuple, first: int, steps: int) -> float:
    """Median seconds of ``steps`` training steps from global step ``first + 1`` (step ``first`` warms up)."""
    times = []
    for step in range(first, first + steps + 1):
        t0 = time.perf_counter()
        loss, _ = task(*batch, torch.tensor(step), 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def training_clips_per_s(preset: str, batch: int, steps: int = 3) -> tuple[float, float]:
    """Clips/s of the preset with the paper's settings, and GFLOP/s of its video encoder forward."""
    model = create_model(preset).train()
    task = PretrainTask(model, {0, 1, 2}, 3, LossConfig(), seed=0)
    opt = build_optimizer(model, OptimConfig())
    n = 2 * batch  # with scene negatives
    inputs = _batch(model, n, 24, 41)
    per_step = _step_seconds(task, opt, inputs, 0, steps)
    video = inputs[0]
    with torch.no_grad():
        model.eval()
        model.encode_video(video[:batch])
        fwd = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            model.encode_video(video[:batch])
            fwd = min(fwd, time.perf_counter() - t0)
    achieved = 2 * count_macs(model)["dual_clip"] * batch / fwd  # GFLOP/s of the video forward
    return n / per_step, achieved


def recipe_clips_per_s(data: str, recipe: str, batch: int, steps: int = 3) -> tuple[str, float, float]:
    """Clips/s of a shipped recipe's dual-only and fused phases (the data gives the taxonomy's reverse verbs)."""
    cfg = resolve(PretrainConfig, [recipe_file(recipe)], [f"data={data}", f"batch_size={batch}"])
    model = create_model(cfg.preset, **cfg.model).train()
    ds = EgoClipDataset(f"{data}/egoclip.csv", f"{data}/videos", model.cfg.video.num_frames, model.cfg.video.img_size)
    first_of_pair = first_of_pairs(Path(data))
    fused_from = steps + 1
    task = PretrainTask(model, {0, 1, 2}, 3, cfg.loss, 0, fused_from, ds.directional, None, first_of_pair)
    opt = build_optimizer(model, cfg.optim)
    n = 2 * batch if cfg.scene_negatives else batch
    inputs = _batch(model, n, ds.n_verbs, ds.n_nouns)
    dual = _step_seconds(task, opt, inputs, 0, steps - 1)  # steps 1..steps-1 timed, all before fused_from
    fused = _step_seconds(task, opt, inputs, fused_from, steps)
    return cfg.preset, n / dual, n / fused


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic dataset root (egovlp data synth)")
    p.add_argument("--preset", default="egovlpv2_small")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--recipe", default="cpu_teacher", help="shipped pre-training recipe timed beside the preset")
    args = p.parse_args()
    cfg = create_model(args.preset).cfg
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    peak = gemm_gflops()
    rows = []
    for w in (0, 1, 2):
        rate = loading_clips_per_s(args.data, cfg.video.img_size, cfg.video.num_frames, args.batch_size, w)
        rows.append((f"data loading, {w} workers", rate))
    train_rate, achieved = training_clips_per_s(args.preset, args.batch_size)
    rows.append((f"training {args.preset}, paper settings (fwd+bwd+AdamW, 3 passes)", train_rate))
    preset, dual_rate, fused_rate = recipe_clips_per_s(args.data, args.recipe, args.batch_size)
    rows.append((f"training {preset}, recipe {args.recipe}: dual-only phase", dual_rate))
    rows.append((f"training {preset}, recipe {args.recipe}: fused phase", fused_rate))
    print("\n| what | clips/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")
    print("\n| fp32 GEMM peak (2048^3) | video encoder forward | share of peak |\n|---|---|---|")
    print(f"| {peak:.0f} GFLOP/s | {achieved:.0f} GFLOP/s | {100 * achieved / peak:.0f}% |")
    slower = "training" if min(r for _, r in rows[3:]) < max(r for _, r in rows[:3]) else "data loading"
    print(f"\nthe slower side: {slower}")


if __name__ == "__main__":
    main()

"""Pre-training throughput on this machine: data loading vs training, side by side in one run.

    python benchmarks/bench_pretrain.py --data data/synth [--preset egovlpv2_small] [--batch-size 16]

Prints a table: data-loading clips/s (decode + train transform, scene negatives included) for 0/1/2 loader
workers, training clips/s for the preset (three passes: dual, fused MLM, fused VTM; forward, backward and AdamW),
the fp32 GEMM peak of this CPU (2048^3, best of 10, torch threads as set) and how much of it the video encoder
forward reaches (FLOPs counted by torch's FlopCounterMode, attention included, best of 3).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.data import DataLoader

from egovlpv2_edge import create_model
from egovlpv2_edge.model.stats import count_macs
from egovlpv2_edge.training.data.dataset import EgoClipDataset, collate
from egovlpv2_edge.training.optim import build_optimizer
from egovlpv2_edge.training.pretrain import LossConfig, PretrainTask
from egovlpv2_edge.training.trainer import OptimConfig


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


def training_clips_per_s(preset: str, batch: int, steps: int = 3) -> tuple[float, float]:
    model = create_model(preset).train()
    cfg = model.cfg
    task = PretrainTask(model, {0, 1, 2}, 3, LossConfig(), seed=0)
    opt = build_optimizer(model, OptimConfig())
    n = 2 * batch  # with scene negatives
    video = torch.randn(n, cfg.video.num_frames, 3, cfg.video.img_size, cfg.video.img_size)
    ids = torch.randint(5, cfg.text.vocab_size, (n, cfg.text.max_length))
    mask = torch.ones_like(ids)
    verb = torch.nn.functional.one_hot(torch.randint(0, 24, (n,)), 24).float()
    noun = torch.nn.functional.one_hot(torch.randint(0, 41, (n,)), 41).float()
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = task(video, ids, mask, verb, noun, torch.tensor(step), 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_step = sorted(times[1:])[len(times[1:]) // 2]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic dataset root (egovlp data synth)")
    p.add_argument("--preset", default="egovlpv2_small")
    p.add_argument("--batch-size", type=int, default=16)
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
    rows.append((f"training {args.preset} (fwd+bwd+AdamW, 3 passes)", train_rate))
    print("\n| what | clips/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")
    print("\n| fp32 GEMM peak (2048^3) | video encoder forward | share of peak |\n|---|---|---|")
    print(f"| {peak:.0f} GFLOP/s | {achieved:.0f} GFLOP/s | {100 * achieved / peak:.0f}% |")
    slower = "training" if train_rate < max(r for _, r in rows[:3]) else "data loading"
    print(f"\nthe slower side: {slower}")


if __name__ == "__main__":
    main()

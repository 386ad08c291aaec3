"""The distillation loop: steps, step log, metrics.jsonl, curves, checkpoints with exact resume.

Private helpers of :func:`egovlpv2_edge.compress.distill.distill`, shaped like the pre-training loop in
:mod:`egovlpv2_edge.training.trainer` (whose batch, autocast and metrics helpers it reuses).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from egovlpv2_edge.checkpoint import save_checkpoint
from egovlpv2_edge.compress._distill_heads import warm_student_qa_head
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.curves import plot_curves
from egovlpv2_edge.training.data.dataset import EgoClipDataset, collate
from egovlpv2_edge.training.distributed import DistInfo
from egovlpv2_edge.training.trainer import (
    GlobalBatchSampler,
    _autocast,
    _batch_to,
    _read_metrics,
    _worker_init,
    check_resumable,
)

if TYPE_CHECKING:
    from egovlpv2_edge.compress._distill_heads import QABatches
    from egovlpv2_edge.compress.distill import DistillConfig, DistillTask

log = logging.getLogger(__name__)

LOG_KEYS = (
    "loss", "distill", "kd_affinity", "kd_embed", "kd_vtm", "kd_mlm", "kd_hidden", "kd_heads", "egonce", "mlm", "vtm"
)  # fmt: skip


@dataclass
class Run:
    """The pieces of a run the loop, the saves and the resume share."""

    cfg: DistillConfig
    info: DistInfo
    task: DistillTask
    ddp: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    out: Path
    total: int
    qa: QABatches | None = None  # QA questions for the QA head's KL, one batch per step
    warm_qa: bool = False  # fit the (fresh) student QA head on the questions when the fused terms start
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def save_run(run: Run, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_checkpoint(
        run.task.student,
        tmp,
        optimizer=run.opt.state_dict(),
        scheduler=run.sched.state_dict(),
        scaler=run.scaler.state_dict(),
        step=run.step,
        rng=torch.get_rng_state(),
        run_config=dataclasses.asdict(run.cfg),
        distill_aux={"proj": run.task.proj.state_dict(), "heads": run.task.heads.state_dict()},
    )
    tmp.replace(path)  # atomic: a killed save never corrupts last.pt


def resume(run: Run, path: Path) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    check_resumable(path, ckpt.get("run_config"), run.cfg)
    run.task.student.load_state_dict(ckpt["model"])
    run.task.proj.load_state_dict(ckpt["distill_aux"]["proj"])
    run.task.heads.load_state_dict(ckpt["distill_aux"]["heads"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"])
    run.step = int(ckpt["step"])
    run.history = _read_metrics(run.out / "metrics.jsonl", run.step)
    log.info("resumed from %s at step %d", path, run.step)


def _step(run: Run, batch: dict[str, Any], s_tok: Tokenizer, t_tok: Tokenizer, shared: bool) -> dict[str, float]:
    """One optimisation step; returns the logged row."""
    cfg, dev = run.cfg, run.info.device
    b = _batch_to(batch, s_tok, run.task.student.cfg.text.max_length, dev)
    t_ids, t_mask = b["input_ids"], b["attention_mask"]
    if not shared:
        enc = t_tok.encode(batch["text"], max_length=run.task.teacher.cfg.text.max_length)
        t_ids, t_mask = torch.from_numpy(enc.input_ids).to(dev), torch.from_numpy(enc.attention_mask).to(dev)
    with _autocast(cfg, dev):
        loss, logs = run.ddp(
            b["video"],
            b["input_ids"],
            b["attention_mask"],
            t_ids,
            t_mask,
            b["verb"],
            b["noun"],
            torch.tensor(run.step),
            b["parts"],
            run.qa.feeds(run.step) if run.qa is not None and run.step >= run.task.fused_from else None,
        )
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.optim.grad_clip:
        run.scaler.unscale_(run.opt)
        nn.utils.clip_grad_norm_(run.task.parameters(), cfg.optim.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    run.step += 1
    factor = run.sched.get_last_lr()[0] / run.opt.param_groups[0]["initial_lr"]
    return {k: float(v) for k, v in logs.items()} | {"step": run.step, "lr": cfg.optim.lr * factor}


def loop(
    run: Run,
    data: EgoClipDataset,
    sampler: GlobalBatchSampler,
    s_tok: Tokenizer,
    t_tok: Tokenizer,
    shared: bool,
    spe: int,
) -> None:
    from egovlpv2_edge.progress import progress

    cfg, info = run.cfg, run.info
    bar = progress(total=run.total, initial=run.step, desc="distill", disable=not info.is_main)
    t_last, clips = time.perf_counter(), 0
    while run.step < run.total and not (cfg.stop_at and run.step == cfg.stop_at):
        epoch, offset = divmod(run.step, spe)
        sampler.set_epoch(epoch, offset)
        data.set_epoch(epoch)
        # its own generator: opening the loader (at an epoch start, or mid-epoch on resume) must not draw from the
        # global RNG that dropout in the steps uses, or a resumed run would drift from an uninterrupted one
        seeds = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                            worker_init_fn=_worker_init, generator=seeds)  # fmt: skip
        for batch in loader:
            if run.warm_qa and run.qa is not None and run.step == run.task.fused_from:
                warm_student_qa_head(run.task, run.qa, cfg.qa_head_warmup, cfg.seed, info.is_main)
            row = _step(run, batch, s_tok, t_tok, shared)
            clips += batch["video"].shape[0] * info.world_size
            if run.step % cfg.log_every == 0 or run.step == run.total:
                now = time.perf_counter()
                row["clips_per_s"], t_last, clips = clips / (now - t_last), now, 0
                log.info(
                    "step %d/%d loss %.4f distill %.4f (affinity %.4f embed %.4f vtm %.4f mlm %.4f hidden %.4f "
                    "heads %.4f) gt (egonce %.4f mlm %.4f vtm %.4f) lr %.2e %.1f clips/s",
                    run.step,
                    run.total,
                    *(row[k] for k in LOG_KEYS),
                    row["lr"],
                    row["clips_per_s"],
                )
            run.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", distill=f"{row['distill']:.3f}", refresh=False)
            if info.is_main:
                with (run.out / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if run.step % cfg.ckpt_every == 0 or run.step in (run.total, cfg.stop_at):
                    save_run(run, run.out / "last.pt")
            if run.step >= run.total or run.step == cfg.stop_at:
                break
    bar.close()


def plot(history: list[dict[str, float]], path: Path) -> None:
    panels = [
        (("loss", "distill", "egonce", "mlm", "vtm"), "total, distillation, ground truth"),
        (LOG_KEYS[2:8], "distillation terms (unweighted)"),
    ]
    plot_curves(history, path, panels, "learning rate")

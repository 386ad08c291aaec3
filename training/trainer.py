"""``egovlp train pretrain``: the pre-training loop under ``torchrun`` (or one process).

Deterministic global batches (a seeded permutation per epoch, each rank taking its slice), AdamW with the
reference's parameter groups, cosine schedule with warmup, checkpoints with exact resume (model, optimizer,
schedule, step and RNG state), a progress bar and a step log, per-step metrics in ``metrics.jsonl`` with a PNG of
the curves, and the resolved config saved with the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from egovlpv2_edge import create_model
from egovlpv2_edge.checkpoint import load_checkpoint, load_minilm, save_checkpoint
from egovlpv2_edge.runconfig import save_resolved
from egovlpv2_edge.training.curves import plot_curves
from egovlpv2_edge.training.data.dataset import EgoClipDataset, collate
from egovlpv2_edge.training.data.taxonomy import first_of_pairs, reverse_narrations
from egovlpv2_edge.training.distributed import DistInfo, barrier, init_distributed
from egovlpv2_edge.training.optim import build_optimizer, cosine_schedule
from egovlpv2_edge.training.pretrain import LossConfig, PretrainTask, reverse_text_table
from egovlpv2_edge.training.text import load_or_train_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and schedule (reference Sec. 2: betas (0.9, 0.98), decay 0.01, x4 for heads and cross-modal)."""

    lr: float = 1e-4  # backbone learning rate
    head_lr_mult: float = 4.0  # multiplier for heads and cross-modal parameters (gates included)
    video_lr_mult: float = 1.0  # multiplier for the video backbone (raise it when it starts from scratch)
    gate_lr_mult: float = 1.0  # extra multiplier for the fusion gates on top of head_lr_mult
    text_lr_mult: float = 1.0  # multiplier for the text backbone; 0 locks it (no text gradients, heads still train)
    weight_decay: float = 0.01  # on weight matrices only (no decay on biases, norms, gates, embeddings' cls/pos)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup: float = 0.1  # share of steps with linear warmup
    # cross-modal parameters (cross-attention, VTM/MLM heads, fusion norm and CLS) in groups of their own whose
    # warmup and cosine run over the fused phase (loss.fusion_start to the end) instead of the whole run
    fused_schedule: bool = False
    grad_clip: float = 1.0  # max grad norm (0 = off)


@dataclass(frozen=True)
class LoopConfig:
    """The loop settings pre-training and distillation share (batches, schedule, checkpoints, devices)."""

    batch_size: int = 16  # global clips per step before scene negatives
    epochs: int = 1
    max_steps: int = 0  # length of the run in steps (0 = all epochs); sets the schedule
    stop_at: int = 0  # pause after this step with a checkpoint, schedule unchanged (0 = never); resume later
    scene_negatives: bool = True  # add a same-video, same-60-s clip per item
    optim: OptimConfig = field(default_factory=OptimConfig)
    amp: str = "off"  # off | bf16 | fp16 (fp16 needs CUDA)
    grad_checkpointing: bool = False
    num_workers: int = 2
    threads: int = 0  # torch intra-op threads per process (0 = default)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    resume: bool = True  # continue from out/last.pt when it exists
    device: str = "auto"
    skip_bad: bool = False  # skip malformed csv rows and clips with missing/corrupt chunks (warned, counted)


@dataclass(frozen=True)
class PretrainConfig(LoopConfig):
    """Everything one pre-training run needs; saved resolved beside the run."""

    data: str = "data/synth"  # dataset root (egoclip.csv, videos/, meta.json)
    out: str = "runs/pretrain"  # run directory
    preset: str = "egovlpv2_small"  # model preset
    model: dict[str, Any] = field(default_factory=dict)  # overrides merged over the preset
    init_text: str = "auto"  # auto (MiniLM for the 30522-vocab BERT presets) | minilm | none
    init: str = ""  # optional checkpoint to start from (this project's or the released layout)
    loss: LossConfig = field(default_factory=LossConfig)


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch of a seeded per-epoch permutation (drop last)."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int) -> None:
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {world} processes")
        if n < global_batch:
            raise ValueError(f"dataset has {n} clips, fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the permutation of ``epoch`` and skip its first ``start_batch`` batches (resume)."""
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)).tolist()
        b = self.global_batch // self.world
        for i in range(self.start, self.n // self.global_batch):
            batch = perm[i * self.global_batch : (i + 1) * self.global_batch]
            yield batch[self.rank * b : (self.rank + 1) * b]


def _init_model(cfg: PretrainConfig, device: torch.device) -> torch.nn.Module:
    model = create_model(cfg.preset, **cfg.model)
    text = model.cfg.text
    want_minilm = cfg.init_text == "minilm" or (
        cfg.init_text == "auto" and text.variant == "bert" and text.vocab_size == 30522 and text.width == 384
    )
    if cfg.init:
        load_checkpoint(model, cfg.init)
    elif want_minilm:
        load_minilm(model)
    elif cfg.init_text not in ("auto", "none", "minilm"):
        raise ValueError(f"init_text={cfg.init_text!r}; valid: auto, minilm, none")
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model.to(device).train()


def _autocast(cfg: PretrainConfig, device: torch.device) -> Any:
    if cfg.amp == "off":
        return torch.autocast(device.type, enabled=False)
    if cfg.amp not in ("bf16", "fp16"):
        raise ValueError(f"amp={cfg.amp!r}; valid: off, bf16, fp16")
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs CUDA; use amp=bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


@dataclass
class _State:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _save(
    path: Path, task: PretrainTask, opt: Any, sched: Any, scaler: Any, state: _State, cfg: PretrainConfig
) -> None:
    tmp = path.with_suffix(".tmp")
    save_checkpoint(
        task.model,
        tmp,
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        scaler=scaler.state_dict(),
        step=state.step,
        rng=torch.get_rng_state(),
        run_config=dataclasses.asdict(cfg),
    )
    tmp.replace(path)  # atomic: a killed save never corrupts last.pt


# settings a resumed run may change: they do not alter what is computed
RESUME_FREE = frozenset({"stop_at", "resume", "num_workers", "threads", "log_every", "ckpt_every", "device"})


def check_resumable(path: Path, saved: Any, cfg: Any) -> None:
    """Raise ValueError naming the settings that differ between the run that wrote ``path`` and ``cfg``.

    Resuming under other settings (another schedule, model or loss) would silently mix two runs, or fail deep in
    the optimizer; the message says how to continue or start over.
    """
    if not isinstance(saved, dict):
        return  # written before run configs were saved: nothing to compare
    before = _flat(saved)
    diffs = [
        f"{k}: {before.get(k)!r} -> {v!r}"
        for k, v in _flat(dataclasses.asdict(cfg)).items()
        if k.split(".")[0] not in RESUME_FREE and before.get(k) != v
    ]
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(
            f"{path} was written by a run with other settings ({shown}). Run again with those settings to continue "
            f"it, or start over: another out= or resume=false (which overwrites {path.parent})"
        )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _resume(path: Path, task: PretrainTask, opt: Any, sched: Any, scaler: Any, state: _State, cfg: Any) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    check_resumable(path, ckpt.get("run_config"), cfg)
    task.model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"])
    state.step = int(ckpt["step"])
    log.info("resumed from %s at step %d", path, state.step)


def _batch_to(batch: dict[str, Any], tokenizer: Any, max_length: int, device: torch.device) -> dict[str, Any]:
    tok = tokenizer.encode(batch["text"], max_length=max_length)
    return {
        "video": batch["video"].to(device, non_blocking=True),
        "input_ids": torch.from_numpy(tok.input_ids).to(device),
        "attention_mask": torch.from_numpy(tok.attention_mask).to(device),
        "verb": batch["verb"].to(device),
        "noun": batch["noun"].to(device),
        "parts": 2 if bool(batch["is_negative"].any()) else 1,
    }


def train(cfg: PretrainConfig) -> Path:
    """Run pre-training; returns the path of the final checkpoint (``<out>/teacher.pt``)."""
    info = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _init_model(cfg, info.device)
    root = Path(cfg.data)
    data = EgoClipDataset(
        root / "egoclip.csv",
        root / "videos",
        model.cfg.video.num_frames,
        model.cfg.video.img_size,
        split="train",
        mode="train",
        scene_negatives=cfg.scene_negatives,
        seed=cfg.seed,
        skip_bad=cfg.skip_bad,
    )
    texts = [r.clip_text for r in data.records]  # a BPE tokenizer learns the training narrations
    tokenizer = load_or_train_tokenizer(model.cfg.text, root / "egoclip.csv", out / "tokenizer.json", info.is_main,
                                        texts)  # fmt: skip
    sampler = GlobalBatchSampler(len(data), cfg.batch_size, info.rank, info.world_size, cfg.seed)
    steps_per_epoch = len(data) // cfg.batch_size
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    fusion_from = round(cfg.loss.fusion_start * total)
    reverse_text = None
    if cfg.loss.reverse_pair_weight > 0:
        narrations = reverse_narrations(root)
        m = model.cfg.text.max_length
        reverse_text = reverse_text_table(narrations, tokenizer, data.n_verbs, data.n_nouns, m)
    first_of_pair = first_of_pairs(root)
    task = PretrainTask(
        model,
        tokenizer.special_ids,
        tokenizer.mask_id,
        cfg.loss,
        cfg.seed,
        fusion_from,
        data.directional,
        reverse_text,
        first_of_pair,
    )
    opt = build_optimizer(model, cfg.optim)  # before DDP, which registers the parameters that train
    ddp = task
    if info.world_size > 1:
        some_unused = fusion_from > 0 or cfg.loss.mlm_weight == 0 or cfg.loss.vtm_weight == 0
        ddp = torch.nn.parallel.DistributedDataParallel(
            task,
            device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            find_unused_parameters=some_unused,
        )
    sched = cosine_schedule(opt, total, cfg.optim.warmup, fusion_from if cfg.optim.fused_schedule else 0)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    state = _State()
    if cfg.resume and (out / "last.pt").is_file():
        _resume(out / "last.pt", task, opt, sched, scaler, state, cfg)
        state.history = _read_metrics(out / "metrics.jsonl", state.step)
    elif info.is_main:
        reset_metrics(out)
    if info.is_main:
        save_resolved(cfg, out)
        log.info(
            "pre-training %s: %d clips, %d steps (%d per epoch), global batch %d on %d process(es)",
            cfg.preset,
            len(data),
            total,
            steps_per_epoch,
            cfg.batch_size,
            info.world_size,
        )
    _loop(cfg, info, ddp, task, data, sampler, tokenizer, opt, sched, scaler, state, total, steps_per_epoch, out)
    barrier()
    if state.step < total:
        log.info("paused at step %d of %d; run again with the same out= to resume", state.step, total)
        return out / "last.pt"
    final = out / "teacher.pt"
    if info.is_main:
        save_checkpoint(model, final, step=state.step, tokenizer=str(out / "tokenizer.json"))
        _plot(state.history, out / "curves.png")
        log.info("wrote %s and %s", final, out / "curves.png")
        if data.skipped:
            log.warning("trained without %d bad item(s) (skip_bad=true): %d malformed csv row(s), %d clip(s) whose "
                        "video chunks are missing or corrupt; see the warnings above", data.skipped,
                        data.skipped - data.skipped_clips, data.skipped_clips)  # fmt: skip
    return final


def _loop(cfg, info: DistInfo, ddp, task, data, sampler, tokenizer, opt, sched, scaler, state, total, spe, out) -> None:
    from egovlpv2_edge.progress import progress

    bar = progress(total=total, initial=state.step, desc="pretrain", disable=not info.is_main)
    max_len = task.model.cfg.text.max_length
    t_last, clips = time.perf_counter(), 0
    while state.step < total:
        epoch, offset = divmod(state.step, spe)
        sampler.set_epoch(epoch, offset)
        data.set_epoch(epoch)
        loader = DataLoader(
            data, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers, worker_init_fn=_worker_init
        )
        for batch in loader:
            b = _batch_to(batch, tokenizer, max_len, info.device)
            with _autocast(cfg, info.device):
                loss, logs = ddp(
                    b["video"],
                    b["input_ids"],
                    b["attention_mask"],
                    b["verb"],
                    b["noun"],
                    torch.tensor(state.step),
                    b["parts"],
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            state.step += 1
            clips += b["video"].shape[0] * info.world_size
            factor = sched.get_last_lr()[0] / opt.param_groups[0]["initial_lr"]
            row = {k: float(v) for k, v in logs.items()} | {"step": state.step, "lr": cfg.optim.lr * factor}
            if state.step % cfg.log_every == 0 or state.step == total:
                now = time.perf_counter()
                row["clips_per_s"] = clips / (now - t_last)
                t_last, clips = now, 0
                log.info(
                    "step %d/%d loss %.4f (egonce %.4f mlm %.4f vtm %.4f) lr %.2e %.1f clips/s",
                    state.step,
                    total,
                    row["loss"],
                    row["egonce"],
                    row["mlm"],
                    row["vtm"],
                    row["lr"],
                    row["clips_per_s"],
                )
            state.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            if info.is_main:
                with (out / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if state.step % cfg.ckpt_every == 0 or state.step in (total, cfg.stop_at):
                    _save(out / "last.pt", task, opt, sched, scaler, state, cfg)
            if state.step >= total or state.step == cfg.stop_at:
                break
        if state.step == cfg.stop_at:
            break
    bar.close()


def _worker_init(_: int) -> None:
    # decoding workers must not compete with the training threads for the cores
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def reset_metrics(out: Path) -> None:
    """A fresh start in ``out``: drop an earlier run's ``metrics.jsonl`` so its rows never mix with the new ones."""
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _read_metrics(path: Path, upto: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= upto]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # drop steps after the checkpoint
    return rows


def _plot(history: list[dict[str, float]], path: Path) -> None:
    plot_curves(
        history,
        path,
        [
            (("loss", "egonce", "mlm", "vtm"), "pre-training losses"),
            (
                ("reverse", "reverse_pair", "shuffle", "direction", "direction_acc"),
                "extra terms (log 2 = 0.69: chance)",
            ),
        ],
        "learning rate",
    )

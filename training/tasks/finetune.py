"""``egovlp train finetune --task qa|retrieval|nlq``: task fine-tuning from a pre-trained checkpoint.

One loop for the three tasks, shaped like the pre-training trainer and, like it, run as one process or under
``torchrun`` (gloo on CPU, NCCL on GPU; ``batch_size`` is the global batch): seeded global batches
(:class:`~egovlpv2_edge.training.trainer.GlobalBatchSampler`), AdamW with the reference's parameter groups plus
the task head at the head rate, cosine schedule with warmup, a progress bar and a step log, per-step metrics
in ``metrics.jsonl`` with a PNG of the curves, and the resolved config saved with the run. The final
checkpoint (``<out>/finetuned.pt``) carries the task head and its vocabularies (see ``tasks/checkpoint.py``).

* ``qa``: end to end, fusion (or ``qa.mode=dual`` for the unfused baseline), CE over the answer set plus the
  multiple-choice VTM loss; ``qa.train=fusion`` trains only the cross-modal parameters and the head on clip tokens
  computed once (several times faster per step, and the dual encoders stay as pre-trained);
* ``retrieval``: end to end, dual, multi-instance max-margin ranking with verb/noun relevancy;
* ``nlq``: frozen backbone, fusion features per window computed once (each process computes its share of the
  videos, then every process holds all of them), only the span head trains.

Each process logs the mean of the processes' values, so a run on N processes logs the same losses as one process
with the same global batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from egovlpv2_edge import create_model
from egovlpv2_edge.runconfig import save_resolved
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.curves import plot_curves
from egovlpv2_edge.training.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from egovlpv2_edge.training.optim import cosine_schedule, reference_groups
from egovlpv2_edge.training.tasks.checkpoint import load_backbone, save_finetuned
from egovlpv2_edge.training.trainer import GlobalBatchSampler, OptimConfig

log = logging.getLogger(__name__)
TASKS = ("qa", "retrieval", "nlq")


@dataclass(frozen=True)
class QAConfig:
    """QA fine-tuning (reference: EgoTaskQA, question length 30, head dropout 0.2)."""

    mode: str = "fusion"  # fusion (the paper) | dual (the unfused baseline: same head on [video; text])
    # all: end to end (the paper) | fusion: only the cross-modal parameters (cross-attention, gates, fusion norm,
    # fusion heads) and the answer head train; the dual encoders stay exactly as pre-trained (cached retrieval
    # embeddings stay valid) and each clip's tokens entering the fused layers are computed once, then reused
    train: str = "all"
    mc_weight: float = 1.0  # weight of the multiple-choice VTM loss (right vs one wrong choice); 0 = off
    # start the fusion stream's CLS token and final norm from the dual stream's (fusion mode; see
    # tasks/qa.py::fusion_stream_from_dual); false keeps the pre-trained fusion stream as it is
    fusion_from_dual: bool = True
    # epochs of fitting the answer head alone on the starting model's features before fine-tuning (a linear probe
    # first, then everything: the fine-tuning starts from a head that already reads the features); 0 = off
    head_warmup: int = 30
    dropout: float = 0.2  # head dropout
    text_length: int = 30  # question tokens (capped by the text encoder's positions)
    # epochs of the gates-off QA head fitted after fine-tuning on the final model's [video; text] dual embeddings
    # (tasks/qa.py::fit_dual_qa_head; packages carry it as heads/qa_dual.json and answer from the index); 0 = none
    dual_head_epochs: int = 30
    # multiplies each video-side cross-attention's output projection at the start of fusion-mode fine-tuning, so
    # the question reaches the fused video CLS (which the answer head reads) at more than the ~1% of its variation
    # it starts at on the CPU teachers; 1 keeps the pre-trained branches as they are
    video_cross_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("fusion", "dual"):
            raise ValueError(f"qa.mode={self.mode!r}; valid: fusion, dual")
        if self.train not in ("all", "fusion"):
            raise ValueError(f"qa.train={self.train!r}; valid: all (end to end), fusion (cross-modal parameters only)")
        if self.train == "fusion" and self.mode != "fusion":
            raise ValueError("qa.train=fusion trains the cross-modal parameters, which qa.mode=dual never runs; "
                             "use qa.train=all with qa.mode=dual")  # fmt: skip


@dataclass(frozen=True)
class RetrievalConfig:
    """Retrieval fine-tuning (reference: EK-100 MIR, margin 0.2)."""

    margin: float = 0.2  # ranking margin of a pair with relevancy 0


@dataclass(frozen=True)
class NLQConfig:
    """Grounding head training on frozen fusion features (reference: EgoNLQ, head lr 1e-3)."""

    window_s: float = 2.0  # seconds per feature window (F frames each)
    hidden: int = 128  # span head width
    layers: int = 1  # span head Transformer layers
    heads: int = 2  # span head attention heads
    dropout: float = 0.1  # span head dropout
    # start/end logits begin as this weight (learned) times each window's standardised dual similarity to the
    # query, and the head learns a correction on top (0 = the head alone, which has to learn the ranking too)
    sim_prior: float = 3.0
    # the head reads each window's fused features (the query fused with the window, as in the reference) and
    # attends to the query's dual-mode token states. Off by default: on a teacher whose fused side stayed at chance
    # (every CPU teacher here) both are only something to overfit, and the head reads window positions and the
    # similarity alone (the fused pass is then skipped); turn both on with a teacher whose VTM learned
    fused_features: bool = False
    query_tokens: bool = False
    lr: float = 1e-3  # head learning rate (the backbone is frozen)
    max_queries: int = 0  # cap on training queries (0 = all)


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything one fine-tuning run needs; saved resolved beside the run."""

    task: str = "qa"  # qa | retrieval | nlq
    data: str = "data/synth"  # dataset root (qa.json / egoclip.csv / nlq_train.json, videos/, meta.json)
    out: str = "runs/finetune"  # run directory
    init: str = ""  # pre-trained checkpoint (teacher.pt; tokenizer embedded or beside it); "" = fresh preset
    preset: str = "egovlpv2_small"  # model preset when init is empty
    model: dict[str, Any] = field(default_factory=dict)  # preset overrides when init is empty
    # frames per clip (0 = the starting model's): the reference fine-tunes QA and retrieval on 16 frames of a model
    # pre-trained on 4; the temporal embedding is interpolated to the new count, and the checkpoint keeps it
    frames: int = 0
    batch_size: int = 8
    epochs: int = 1
    max_steps: int = 0  # length of the run in steps (0 = all epochs)
    optim: OptimConfig = field(default_factory=OptimConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    nlq: NLQConfig = field(default_factory=NLQConfig)
    amp: str = "off"  # off | bf16 | fp16 (fp16 needs CUDA)
    num_workers: int = 1
    threads: int = 0  # torch intra-op threads (0 = default)
    seed: int = 0
    log_every: int = 10
    device: str = "auto"


def _autocast(amp: str, device: torch.device) -> Any:
    if amp == "off":
        return torch.autocast(device.type, enabled=False)
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp={amp!r}; valid: off, bf16, fp16")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs CUDA; use amp=bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _backbone(cfg: FinetuneConfig, out: Path, main: bool) -> tuple[nn.Module, Tokenizer]:
    """The starting model and tokenizer; the main process saves the tokenizer as ``out/tokenizer.json``."""
    if cfg.init:
        model, tok = load_backbone(cfg.init, num_frames=cfg.frames)
        if main:
            tok.save(out / "tokenizer.json")
        return model, tok
    from egovlpv2_edge.training.text import load_or_train_tokenizer

    log.warning("no init= checkpoint: fine-tuning a freshly initialised %s (pass init=<teacher.pt>)", cfg.preset)
    overrides = dict(cfg.model)
    if cfg.frames:
        overrides["video"] = {**overrides.get("video", {}), "num_frames": cfg.frames}
    model = create_model(cfg.preset, **overrides)
    tok = load_or_train_tokenizer(model.cfg.text, Path(cfg.data) / "egoclip.csv", out / "tokenizer.json", main)
    return model, tok


def _optimizer(cfg: FinetuneConfig, task: nn.Module) -> torch.optim.AdamW:
    """Reference groups for the backbone (frozen for NLQ) plus the task head at the head rate."""
    o = cfg.optim
    head = [p for p in getattr(task, "head", nn.Module()).parameters() if p.requires_grad]
    if cfg.task == "nlq":
        return torch.optim.AdamW(head, lr=cfg.nlq.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    groups = reference_groups(task.model, o)
    if head:
        decay = [p for p in head if p.ndim >= 2]
        groups += [{"params": decay, "lr": o.lr * o.head_lr_mult, "weight_decay": o.weight_decay, "name": "task_decay"},
                   {"params": [p for p in head if p.ndim < 2], "lr": o.lr * o.head_lr_mult, "weight_decay": 0.0,
                    "name": "task_no_decay"}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


@dataclass
class TaskSetup:
    """What one task contributes to the loop."""

    task: nn.Module
    data: Any  # a Dataset (len, getitem, optional set_epoch)
    collate: Callable[[list], Any]
    # (module, batch, step) -> loss to back-propagate, logs; ``module`` is ``task`` or its DDP wrapper
    step: Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    vocab: dict[str, list[str]]
    params: dict[str, Any]
    head: nn.Module | None
    mode: str


def finetune(cfg: FinetuneConfig) -> Path:
    """Run fine-tuning (one process, or each process of a ``torchrun`` launch); returns ``<out>/finetuned.pt``."""
    if cfg.task not in TASKS:
        raise ValueError(f"task={cfg.task!r}; valid: {', '.join(TASKS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    info = init_distributed(cfg.device)
    try:
        return _finetune(cfg, info)
    finally:
        cleanup()


def _finetune(cfg: FinetuneConfig, info: DistInfo) -> Path:
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    device = info.device
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = _backbone(cfg, out, info.is_main)
    model = model.to(device).train()
    from egovlpv2_edge.training.tasks import _setup

    setup = _setup.build(cfg, model, tok, info)
    opt = _optimizer(cfg, setup.task)
    steps_per_epoch = len(setup.data) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(setup.data)} training items, fewer than one batch of {cfg.batch_size}")
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    sched = cosine_schedule(opt, total, cfg.optim.warmup)
    if info.is_main:
        save_resolved(cfg, out)
    log.info("fine-tuning %s (%s): %d items, %d steps (%d per epoch), global batch %d on %d process(es)", cfg.task,
             setup.mode, len(setup.data), total, steps_per_epoch, cfg.batch_size, info.world_size)  # fmt: skip
    run: nn.Module = setup.task
    if info.world_size > 1:  # a task leaves parts of the model unused (the fused layers in retrieval, ...)
        ids = [device.index] if device.type == "cuda" else None
        run = torch.nn.parallel.DistributedDataParallel(setup.task, device_ids=ids, find_unused_parameters=True)
    history = _loop(cfg, setup, run, opt, sched, total, steps_per_epoch, out, info)
    final = out / "finetuned.pt"
    if info.is_main:
        extra = {}
        if cfg.task == "qa" and cfg.qa.dual_head_epochs > 0:
            from egovlpv2_edge.training.tasks.qa import fit_dual_qa_head

            extra["dual_head"] = fit_dual_qa_head(model, tok, cfg.data, setup.vocab["answers"], cfg.qa.dual_head_epochs,
                                                  cfg.qa.dropout, cfg.seed)  # fmt: skip
        save_finetuned(final, model, out / "tokenizer.json", cfg.task, setup.mode, setup.head, setup.vocab,
                       setup.params, dataclasses.asdict(cfg), len(history), extra)  # fmt: skip
        _plot(history, out / "curves.png", cfg.task)
        log.info("wrote %s and %s", final, out / "curves.png")
    barrier()
    return final


def _loop(cfg: FinetuneConfig, setup: TaskSetup, run: nn.Module, opt: Any, sched: Any, total: int, spe: int,
          out: Path, info: DistInfo) -> list[dict[str, float]]:  # fmt: skip
    from egovlpv2_edge.progress import progress

    device, world = info.device, info.world_size
    sampler = GlobalBatchSampler(len(setup.data), cfg.batch_size, info.rank, world, cfg.seed)
    metrics = out / "metrics.jsonl"
    if info.is_main:
        metrics.write_text("")
    history: list[dict[str, float]] = []
    bar = progress(total=total, desc=f"finetune {cfg.task}", disable=not info.is_main)
    step, t_last, seen = 0, time.perf_counter(), 0
    params = [p for g in opt.param_groups for p in g["params"]]
    base_lr = cfg.nlq.lr if cfg.task == "nlq" else cfg.optim.lr  # logged: the backbone rate (head rate for NLQ)
    while step < total:
        epoch = step // spe
        sampler.set_epoch(epoch, step % spe)
        if hasattr(setup.data, "set_epoch"):
            setup.data.set_epoch(epoch)
        workers = 0 if getattr(setup.data, "cached", False) else cfg.num_workers  # tensors computed once
        loader = DataLoader(setup.data, batch_sampler=sampler, collate_fn=setup.collate, num_workers=workers)
        for batch in loader:
            with _autocast(cfg.amp, device):
                loss, logs = setup.step(run, batch, step)
            means = all_reduce_sum(torch.stack([v.float() for v in logs.values()])) / world  # one collective
            logs = dict(zip(logs, means, strict=True))  # the mean over processes
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            opt.step()
            sched.step()
            step += 1
            seen += cfg.batch_size
            factor = sched.get_last_lr()[0] / opt.param_groups[0]["initial_lr"]
            row = {k: float(v) for k, v in logs.items()} | {"step": step, "lr": base_lr * factor}
            if info.is_main and (step % cfg.log_every == 0 or step == total):
                now = time.perf_counter()
                row["items_per_s"] = seen / (now - t_last)
                t_last, seen = now, 0
                parts = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "loss")
                log.info("step %d/%d loss %.4f (%s) lr %.2e %.1f items/s", step, total, row["loss"], parts,
                         row["lr"], row["items_per_s"])  # fmt: skip
            history.append(row)
            if info.is_main:
                with metrics.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            if step >= total:
                break
    bar.close()
    return history


def _plot(history: list[dict[str, float]], path: Path, task: str) -> None:
    if not history:
        return
    keys = [k for k in history[0] if k not in ("step", "lr", "items_per_s")]
    plot_curves(history, path, [(keys, f"{task} fine-tuning")], "learning rate (backbone; head for NLQ)")

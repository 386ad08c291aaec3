"""Fine-tuned checkpoints: the backbone, the task head and its label vocabularies in one file.

Layout (this project's checkpoint format, so ``egovlpv2_edge.checkpoint.load_checkpoint`` still loads the
backbone)::

    {"format": "egovlpv2_edge/1", "config": <model config>, "model": <backbone state dict>,
     "tokenizer_json": <the tokenizer.json text>, "step": int, "run_config": {...},
     "task": {"name": "qa" | "retrieval" | "nlq", "mode": "fusion" | "dual",
              "head": <head state dict> | None, "head_config": {...} | None,
              "vocab": {"answers": [...], ...}, "params": {...}}}

Everything besides tensors is plain lists, dicts, strings and numbers, so ``torch.load(weights_only=True)``
reads it and compression and the runtime need no side files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from egovlpv2_edge.checkpoint import load_checkpoint, save_checkpoint
from egovlpv2_edge.config import ModelConfig
from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.tasks.heads import build_head

__all__ = [
    "FinetunedRun",
    "TaskCheckpointError",
    "dual_qa_head",
    "load_backbone",
    "load_finetuned",
    "qa_task_head",
    "save_finetuned",
]


class TaskCheckpointError(ValueError):
    """A checkpoint is not what a task needs (no config, no tokenizer, no task head, another task)."""


@dataclass
class FinetunedRun:
    """A loaded fine-tuned checkpoint."""

    model: EgoVLPv2
    tokenizer: Tokenizer
    task: str
    mode: str
    head: nn.Module | None
    vocab: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    dual_head: nn.Module | None = None  # the gates-off QA head (task["dual_head"]), over vocab["answers"]


def _read(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} does not exist; train one with `egovlp train pretrain|finetune`")
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise TaskCheckpointError(f"{file} carries no model config; it is not an egovlpv2_edge checkpoint")
    return ckpt


def _tokenizer(ckpt: dict[str, Any], path: Path, max_length: int, tokenizer: str | Path | None) -> Tokenizer:
    if tokenizer is not None:
        return Tokenizer.from_file(tokenizer, max_length=max_length)
    if ckpt.get("tokenizer_json"):
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "tokenizer.json"
            file.write_text(ckpt["tokenizer_json"])
            return Tokenizer.from_file(file, max_length=max_length)
    beside = path.parent / "tokenizer.json"
    if not beside.is_file():
        raise TaskCheckpointError(f"{path} embeds no tokenizer and there is no {beside}; pass a tokenizer.json")
    return Tokenizer.from_file(beside, max_length=max_length)


def load_backbone(path: str | Path, tokenizer: str | Path | None = None,
                  num_frames: int = 0) -> tuple[EgoVLPv2, Tokenizer]:  # fmt: skip
    """A model (eval mode) and its tokenizer from a pre-trained or fine-tuned checkpoint.

    The tokenizer is ``tokenizer`` when given, else the one embedded in the checkpoint, else ``tokenizer.json``
    beside it. ``num_frames`` > 0 builds the model for that many frames per clip (the checkpoint's temporal
    embedding is interpolated or truncated to it).
    """
    path = Path(path)
    ckpt = _read(path)
    config = ckpt["config"]
    if num_frames > 0:
        config = {**config, "video": {**config["video"], "num_frames": int(num_frames)}}
    model = EgoVLPv2(ModelConfig.from_dict(config))
    load_checkpoint(model, path)
    return model.eval(), _tokenizer(ckpt, path, model.cfg.text.max_length, tokenizer)


def save_finetuned(path: str | Path, model: EgoVLPv2, tokenizer_file: str | Path, task: str, mode: str,
                   head: nn.Module | None, vocab: dict[str, list[str]], params: dict[str, Any],
                   run_config: dict[str, Any], step: int, extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write a self-contained fine-tuned checkpoint (atomically: a temporary file renamed into place).

    ``extra`` entries join the ``task`` entry (e.g. ``dual_head``, the gates-off QA head of
    :func:`~egovlpv2_edge.training.tasks.qa.fit_dual_qa_head`).
    """
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    payload = {
        "name": task,
        "mode": mode,
        "head": head.state_dict() if head is not None else None,
        "head_config": head.config() if head is not None else None,  # type: ignore[operator]
        "vocab": {k: list(v) for k, v in vocab.items()},
        "params": params,
        **(extra or {}),
    }
    save_checkpoint(model, tmp, task=payload, tokenizer_json=Path(tokenizer_file).read_text(), step=step,
                    run_config=run_config)  # fmt: skip
    tmp.replace(path)
    return path


def _stored_head(config: Mapping[str, Any], state: Mapping[str, Any]) -> nn.Module:
    """A head rebuilt from its stored ``config()`` with its stored weights loaded."""
    head = build_head(dict(config))
    head.load_state_dict(state)
    return head


def qa_task_head(task: Any) -> tuple[nn.Module, str] | None:
    """The QA head a checkpoint's ``task`` entry carries (built, weights loaded) and its mode; None without one."""
    if not isinstance(task, Mapping) or not task.get("head_config") or task.get("head") is None:
        return None
    if task["head_config"].get("kind") != "qa":
        return None
    return _stored_head(task["head_config"], task["head"]), str(task.get("mode", ""))


def dual_qa_head(task: Any) -> tuple[nn.Module, list[str], dict[str, Any]] | None:
    """The gates-off QA head a checkpoint's ``task`` entry carries (``task["dual_head"]``: built, weights loaded,
    eval mode), its answers and what it was fitted on; None without one."""
    entry = task.get("dual_head") if isinstance(task, Mapping) else None
    if not isinstance(entry, Mapping) or not entry.get("config") or entry.get("state") is None:
        return None
    info = {k: entry[k] for k in ("questions", "train_accuracy") if k in entry}
    return _stored_head(entry["config"], entry["state"]).eval(), list(entry.get("answers") or ()), info


def load_finetuned(path: str | Path, expect: str | None = None, tokenizer: str | Path | None = None) -> FinetunedRun:
    """Load a fine-tuned checkpoint with its head and vocabularies.

    Args:
        path: The checkpoint.
        expect: Task name it must carry (``qa``, ``retrieval``, ``nlq``), or None for any.
        tokenizer: Optional tokenizer.json overriding the embedded one.

    Raises:
        TaskCheckpointError: If it carries no task, or another one than ``expect``.
    """
    path = Path(path)
    ckpt = _read(path)
    task = ckpt.get("task")
    if not isinstance(task, dict):
        raise TaskCheckpointError(f"{path} carries no task head; fine-tune it with `egovlp train finetune --task ...`")
    if expect is not None and task["name"] != expect:
        raise TaskCheckpointError(f"{path} is a {task['name']!r} checkpoint, not {expect!r}")
    model, tok = load_backbone(path, tokenizer)
    head = _stored_head(task["head_config"], task["head"]).eval() if task.get("head_config") else None
    dual = dual_qa_head(task)
    return FinetunedRun(model, tok, task["name"], task.get("mode", ""), head, task.get("vocab", {}),
                        task.get("params", {}), ckpt.get("run_config", {}),
                        None if dual is None else dual[0])  # fmt: skip

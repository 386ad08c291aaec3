"""``egovlp train``: pre-training (``pretrain``) runs, launched with ``torchrun`` to use several processes, and
task fine-tuning (``finetune --task qa|retrieval|nlq``) from a pre-trained checkpoint.

Configuration is the :class:`~egovlpv2_edge.training.trainer.PretrainConfig` dataclass, an optional JSON override
file (``--config``) and ``key=value`` overrides, e.g.::

    egovlp train pretrain data=data/synth out=runs/teacher preset=egovlpv2_small epochs=3
    egovlp train pretrain --recipe cpu_teacher data=data/synth200 out=runs/teacher   # the 2-core CPU teacher
    torchrun --nproc_per_node 2 -m egovlpv2_edge.training.cli pretrain batch_size=32
    egovlp train finetune --task qa --init runs/teacher/teacher.pt data=data/synth out=runs/qa max_steps=200

``--recipe NAME`` starts from a shipped override file (``training/recipes/NAME.json``) before ``--config`` and the
overrides. Fine-tuning reads :class:`~egovlpv2_edge.training.tasks.finetune.FinetuneConfig` the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

from egovlpv2_edge.runconfig import resolve


def _recipe_dir() -> Path:
    return Path(str(resources.files("egovlpv2_edge.training").joinpath("recipes")))


def recipes() -> list[str]:
    """Names of the shipped pre-training recipes (``--recipe``), sorted."""
    return sorted(p.stem for p in _recipe_dir().glob("*.json"))


def recipe_file(name: str) -> Path:
    """The override file of the shipped recipe ``name``.

    Raises:
        ValueError: No such recipe; the message lists the shipped ones.
    """
    path = _recipe_dir() / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipes())}")
    return path


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp train``; returns the exit status."""
    p = argparse.ArgumentParser(prog="egovlp train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pre = sub.add_parser("pretrain", help="pre-train the teacher (EgoNCE + MLM + VTM)")
    pre.add_argument("--recipe", choices=recipes(), help="shipped settings to start from (cpu_teacher: the CPU recipe)")
    pre.add_argument("--config", help="JSON file with the keys to change")
    pre.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")
    ft = sub.add_parser("finetune", help="fine-tune a task head (qa, retrieval, nlq) from a pre-trained checkpoint")
    ft.add_argument("--task", required=True, choices=["qa", "retrieval", "nlq"], help="task to fine-tune")
    ft.add_argument("--init", help="pre-trained checkpoint to start from (e.g. runs/teacher/teacher.pt)")
    ft.add_argument("--config", help="JSON file with the keys to change")
    ft.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")
    args = p.parse_args(argv)
    if args.cmd == "finetune":
        return _finetune(args)
    from egovlpv2_edge.training.trainer import PretrainConfig, train

    try:
        files = ([recipe_file(args.recipe)] if args.recipe else []) + ([args.config] if args.config else [])
        cfg = resolve(PretrainConfig, files, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"egovlp train: {exc}", file=sys.stderr)
        return 2
    from egovlpv2_edge.training.data.egoclip import EgoClipFormatError
    from egovlpv2_edge.training.data.video import VideoReadError

    try:
        final = train(cfg)
    except (EgoClipFormatError, VideoReadError) as exc:  # bad data: the message names the item and the fix
        print(f"egovlp train pretrain: {exc}", file=sys.stderr)
        return 2
    print(f"teacher checkpoint: {final}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from egovlpv2_edge.training.tasks.finetune import FinetuneConfig, finetune

    extra = [f"task={args.task}"] + ([f"init={args.init}"] if args.init else [])
    try:
        cfg = resolve(FinetuneConfig, args.config, list(args.overrides) + extra)
    except (ValueError, FileNotFoundError) as exc:
        print(f"egovlp train finetune: {exc}", file=sys.stderr)
        return 2
    if cfg.init and not Path(cfg.init).is_file():
        print(f"egovlp train finetune: --init {cfg.init} does not exist; pre-train one with `egovlp train pretrain`",
              file=sys.stderr)  # fmt: skip
        return 2
    from egovlpv2_edge.training.tasks.checkpoint import TaskCheckpointError

    try:
        final = finetune(cfg)
    except TaskCheckpointError as exc:
        print(f"egovlp train finetune: {exc}", file=sys.stderr)
        return 2
    print(f"fine-tuned {cfg.task} checkpoint: {final}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())

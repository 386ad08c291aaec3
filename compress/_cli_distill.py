"""``egovlp compress distill``: distil a pre-trained teacher into the edge student (gated fusion layers kept).

Configuration is the :class:`~egovlpv2_edge.compress.distill.DistillConfig` dataclass, an optional JSON override
file (``--config``) and ``key=value`` overrides; the flags set the common keys::

    egovlp compress distill --teacher runs/teacher/teacher.pt --data data/synth --out runs/edge
    egovlp compress distill --teacher t.pt --data d --out o loss.hidden_weight=0.5 max_steps=200 batch_size=32
    torchrun --nproc_per_node 2 -m egovlpv2_edge.compress._cli_distill --teacher t.pt --data d --out o
"""

from __future__ import annotations

import argparse
import logging
import sys

from egovlpv2_edge.runconfig import resolve

HELP = "distil a pre-trained teacher into the edge student (gated fusion layers kept)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the distillation flags and the ``key=value`` overrides to ``p``."""
    p.add_argument("--teacher", required=True, help="teacher checkpoint (this project's format, e.g. teacher.pt)")
    p.add_argument("--data", required=True, help="dataset root (egoclip.csv, videos/, meta.json)")
    p.add_argument("--out", required=True, help="run directory (resumes from its last.pt when present)")
    p.add_argument("--student-preset", default=None, help="student model preset (default: egovlpv2_edge)")
    p.add_argument("--config", default=None, help="JSON file with the DistillConfig keys to change")
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")


def run(args: argparse.Namespace) -> int:
    """Resolve the config from parsed ``args`` and run; returns the exit status (2 on a bad input)."""
    from egovlpv2_edge.compress.distill import DistillConfig, distill

    flags = [f"teacher={args.teacher}", f"data={args.data}", f"out={args.out}"]
    if args.student_preset is not None:
        flags.append(f"student_preset={args.student_preset}")
    try:
        cfg = resolve(DistillConfig, args.config, [*args.overrides, *flags])
        path = distill(cfg)
    except (ValueError, FileNotFoundError) as exc:  # DistillError, CheckpointError and bad config values
        print(f"egovlp compress distill: {exc}", file=sys.stderr)
        return 2
    kind = "student checkpoint" if path.name == "student.pt" else "paused; resume checkpoint"
    print(f"{kind}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp compress distill``.

    Args:
        argv: Arguments after ``distill``; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 when the run finished or paused, 2 on a bad argument, config or teacher/student pair.
    """
    p = argparse.ArgumentParser(
        prog="egovlp compress distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())

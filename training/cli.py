"""``egovlp train``: pre-training (``pretrain``) runs; launch with ``torchrun`` to use several processes.

Configuration is the :class:`~egovlpv2_edge.training.trainer.PretrainConfig` dataclass, an optional JSON override
file (``--config``) and ``key=value`` overrides, e.g.::

    egovlp train pretrain data=data/synth out=runs/teacher preset=egovlpv2_small epochs=3
    torchrun --nproc_per_node 2 -m egovlpv2_edge.training.cli pretrain batch_size=32
"""

from __future__ import annotations

import argparse
import logging
import sys

from egovlpv2_edge.runconfig import resolve


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp train``; returns the exit status."""
    p = argparse.ArgumentParser(prog="egovlp train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pre = sub.add_parser("pretrain", help="pre-train the teacher (EgoNCE + MLM + VTM)")
    pre.add_argument("--config", help="JSON file with the keys to change")
    pre.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")
    args = p.parse_args(argv)
    from egovlpv2_edge.training.trainer import PretrainConfig, train

    try:
        cfg = resolve(PretrainConfig, args.config, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"egovlp train: {exc}", file=sys.stderr)
        return 2
    final = train(cfg)
    print(f"teacher checkpoint: {final}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())

"""``egovlp model``: list presets, show a preset's resolved config, parameters and GMACs per clip."""

from __future__ import annotations

import argparse
import json

from egovlpv2_edge.config import get_config, list_models


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egovlp model", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the presets")
    info = sub.add_parser("info", help="resolved config, parameters and GMACs of a preset")
    info.add_argument("name", help=f"one of: {', '.join(list_models())}")
    info.add_argument("--macs", action=argparse.BooleanOptionalAction, default=True, help="count GMACs per clip")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp model``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.cmd == "list":
        for name in list_models():
            print(f"{name:28s} {get_config(name).description}")
        return 0
    try:
        cfg = get_config(args.name)
    except ValueError as exc:
        print(f"egovlp model: {exc}")
        return 2
    print(json.dumps(cfg.to_dict(), indent=2))
    from egovlpv2_edge import create_model
    from egovlpv2_edge.model.stats import count_macs, count_params

    model = create_model(args.name)
    for part, n in count_params(model).items():
        print(f"params {part:16s} {n / 1e6:10.3f} M")
    if args.macs:
        for stage, g in count_macs(model).items():
            print(f"gmacs  {stage:16s} {g:10.3f}")
    return 0

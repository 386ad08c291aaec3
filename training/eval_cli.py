"""``egovlp eval``: zero-shot EgoMCQ and retrieval, and the fine-tuned tasks against their baselines.

egovlp eval egomcq --checkpoint runs/teacher/teacher.pt --data data/synth
egovlp eval --task qa --checkpoint runs/qa/finetuned.pt --data data/synth [--shuffle-frames]
egovlp eval --task retrieval --checkpoint runs/retrieval/finetuned.pt --data data/synth [--baseline PT]
egovlp eval --task nlq --checkpoint runs/nlq/finetuned.pt --data data/synth [--annotations nlq_val.json]
egovlp eval --task zeroshot --checkpoint runs/teacher/teacher.pt --data data/synth [--classes verb]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from egovlpv2_edge.checkpoint import load_checkpoint
from egovlpv2_edge.config import ModelConfig
from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.tokenizer import Tokenizer


def load_run(checkpoint: str | Path, tokenizer: str | Path | None = None) -> tuple[EgoVLPv2, Tokenizer]:
    """A model and its tokenizer from a training checkpoint (``tokenizer.json`` beside it by default)."""
    ckpt_path = Path(checkpoint)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist; train one with `egovlp train pretrain`")
    cfg = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("config")
    if cfg is None:
        raise ValueError(f"{ckpt_path} carries no model config; it is not an egovlpv2_edge checkpoint")
    model = EgoVLPv2(ModelConfig.from_dict(cfg))
    load_checkpoint(model, ckpt_path)
    tok_path = Path(tokenizer) if tokenizer else ckpt_path.parent / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(f"tokenizer {tok_path} does not exist; pass --tokenizer")
    return model.eval(), Tokenizer.from_file(tok_path, max_length=model.cfg.text.max_length)


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp eval``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--task" or a.startswith("--task=") for a in argv):
        from egovlpv2_edge.training.tasks._eval_cli import main as task_main

        return task_main(argv)
    return _egomcq_main(argv)


def _egomcq_main(argv: list[str]) -> int:
    from egovlpv2_edge.training.evaluate import (
        FRAME_CONTROLS,
        MCQ_KINDS,
        evaluate_egomcq,
        evaluate_order_pairs,
        evaluate_retrieval,
    )

    p = argparse.ArgumentParser(prog="egovlp eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="task", required=True)
    mcq = sub.add_parser("egomcq", help="EgoMCQ accuracy and text-to-video recall")
    mcq.add_argument("--checkpoint", required=True)
    mcq.add_argument("--data", required=True, help="dataset root (egomcq.json, egoclip.csv, videos/)")
    mcq.add_argument("--tokenizer", help="tokenizer.json (default: beside the checkpoint)")
    mcq.add_argument(
        "--shuffle-frames",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also score each question with its clips' frames shuffled and print the paired drop",
    )
    mcq.add_argument(
        "--reverse-frames",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also score each question with its clips played backwards and print the paired drop",
    )
    mcq.add_argument("--split", default="test", help="split for retrieval recall")
    mcq.add_argument("--limit", type=int, help="evaluate only the first N questions")
    mcq.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    model, tok = load_run(args.checkpoint, args.tokenizer)
    controls = [c for c, on in (("shuffled", args.shuffle_frames), ("reversed", args.reverse_frames)) if on]
    res = evaluate_egomcq(model, tok, args.data, controls=controls, limit=args.limit)
    recall = evaluate_retrieval(model, tok, args.data, split=args.split)
    try:
        order = evaluate_order_pairs(model, tok, args.data, split=args.split)
    except ValueError as exc:  # a dataset without reverse verbs (e.g. real EgoClip): the test does not apply
        print(f"order pairs: skipped ({exc})")
        order = None
    kinds = [k for k in MCQ_KINDS if k != "intra_reverse" or res.counts[k]]
    label = {"inter": "inter", "intra": "intra", "intra_reverse": "vs rev"}
    print(f"EgoMCQ ({res.counts['inter']} inter, {res.counts['intra']} intra questions; chance 20%)")
    if res.counts["intra_reverse"]:
        print(f"vs rev: the {res.counts['intra_reverse']} intra questions with the answer's reverse action on the same "
              "object among the choices (only the order of the frames tells those two apart)")  # fmt: skip
    print(f"{'scoring':10s} " + " ".join(f"{label[k]:>7s}" for k in kinds))
    for scoring, acc in res.accuracy.items():
        print(f"{scoring:10s} " + " ".join(f"{acc[k]:7.1f}" for k in kinds))
    for name, ctl in res.controls.items():
        print(f"the same questions with each clip's frames {FRAME_CONTROLS[name]}; drop = in order - {name}, +- its "
              "paired 95% interval (a drop larger than the interval is significant)")  # fmt: skip
        print(f"{'scoring':10s} " + " ".join(f"{label[k]:>7s} {name:>8s} {'drop':>13s}" for k in kinds))
        for scoring, acc in res.accuracy.items():
            cells = []
            for k in kinds:
                d, half = ctl.drop[scoring][k]
                cells.append(f"{acc[k]:7.1f} {ctl.accuracy[scoring][k]:8.1f} {d:6.1f} +- {half:4.1f}")
            print(f"{scoring:10s} " + " ".join(cells))
    print("text-to-video " + "  ".join(f"{k} {v:.1f}" for k, v in recall.items()) + f" ({args.split} split)")
    if order is not None:
        print(f"order pairs ({order.clips} {args.split} clips, verb vs its reverse, dual; chance 50%): "
              f"frames in order {order.in_order:.1f}, reversed {order.reversed:.1f}, "
              f"paired drop {order.drop[0]:.1f} +- {order.drop[1]:.1f}")  # fmt: skip
    if args.json:
        payload = {"egomcq": res.accuracy, "counts": res.counts, "retrieval": recall}
        for name, ctl in res.controls.items():
            payload[name] = ctl.accuracy
            payload[f"{name}_drop"] = {s: {k: {"drop": d, "ci95": h} for k, (d, h) in v.items()}
                                       for s, v in ctl.drop.items()}  # fmt: skip
        if order is not None:
            payload["order_pairs"] = {"clips": order.clips, "in_order": order.in_order, "reversed": order.reversed,
                                      "drop": order.drop[0], "ci95": order.drop[1]}  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0

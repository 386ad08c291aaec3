"""``egovlp eval --task qa|retrieval|nlq|zeroshot``: evaluate a checkpoint and print model vs baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASKS = ("qa", "retrieval", "nlq", "zeroshot")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egovlp eval", description=__doc__)
    p.add_argument("--task", required=True, choices=TASKS, help="task to evaluate")
    p.add_argument("--checkpoint", required=True, help="fine-tuned checkpoint (pre-trained one for zeroshot)")
    p.add_argument("--data", required=True, help="dataset root (qa.json, egoclip.csv, nlq_*.json, videos/)")
    p.add_argument("--split", default="test", help="split to evaluate (default %(default)s)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: embedded in the checkpoint, or beside it)")
    p.add_argument("--shuffle-frames", action=argparse.BooleanOptionalAction, default=False,
                   help="qa: also evaluate with shuffled frames (the order control)")  # fmt: skip
    p.add_argument("--probe-epochs", type=int, default=30, help="qa: epochs of the dual-feature head (0 = skip)")
    p.add_argument("--limit", type=int, help="qa: use only the first N questions of each split")
    p.add_argument("--baseline", help="retrieval: pre-trained checkpoint for the zero-shot row (default: the init)")
    p.add_argument("--annotations", help="nlq: an Ego4D NLQ json (default: <data>/nlq_<split>.json)")
    p.add_argument("--videos", help="nlq: video root for --annotations (default: <data>/videos)")
    p.add_argument("--max-queries", type=int, default=0, help="nlq: evaluate at most N queries (0 = all)")
    p.add_argument("--classes", choices=["action", "verb"], default="action", help="zeroshot: class prompts")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="qa: where the model runs (auto: CUDA when available; default %(default)s)")  # fmt: skip
    p.add_argument("--json", help="also write the results to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp eval --task ...``; returns the exit status."""
    args = _parser().parse_args(argv)
    from egovlpv2_edge.training.distributed import resolve_device
    from egovlpv2_edge.training.tasks import evaluate as ev
    from egovlpv2_edge.training.tasks.checkpoint import TaskCheckpointError, load_backbone, load_finetuned

    data = Path(args.data)
    try:
        if args.device != "cpu" and args.task != "qa":
            raise ValueError(f"--device {args.device} applies to --task qa only; leave it out for {args.task}")
        if args.task == "zeroshot":
            from egovlpv2_edge.training.tasks.zeroshot import evaluate_zeroshot

            model, tok = load_backbone(args.checkpoint, args.tokenizer)
            r = evaluate_zeroshot(model, tok, data, args.split, args.classes)
            table = ev.EvalTable(f"zero-shot recognition ({r.classes} {r.kind} classes, {r.clips} clips, {args.split})")
            table.add("model (dual, class prompts)", {"mAP": r.map})
            table.add("chance (random scores)", {"mAP": r.chance})
        else:
            run = load_finetuned(args.checkpoint, args.task, args.tokenizer)
            if args.task == "qa":
                run = ev.qa_run_to(run, resolve_device(args.device, option="--device "))
                table = ev.evaluate_qa(run, data, args.split, args.shuffle_frames, args.probe_epochs, args.limit)
            elif args.task == "retrieval":
                table = ev.evaluate_retrieval(run, data, args.split, args.baseline)
            else:
                from egovlpv2_edge.training.tasks._setup import ensure_task_files, read_meta

                meta = read_meta(data) if not args.annotations else {}
                ann = Path(args.annotations) if args.annotations else ensure_task_files(data, f"nlq_{args.split}.json")
                videos = Path(args.videos) if args.videos else data / "videos"
                table = ev.evaluate_nlq(run, ann, videos, float(meta.get("chunk_seconds", 600.0)), meta.get("fps"),
                                        args.max_queries)  # fmt: skip
    except (FileNotFoundError, TaskCheckpointError, ValueError) as exc:
        print(f"egovlp eval: {exc}", file=sys.stderr)
        return 2
    print(table.format())
    if args.json:
        Path(args.json).write_text(json.dumps(table.to_json(), indent=2))
    return 0

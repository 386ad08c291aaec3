"""``egovlp data``: generate the synthetic egocentric dataset, draw a contact sheet, print counts.

Subcommands::

    egovlp data synth --out DIR [--videos 40 --seed 0 --fps 10 --size 128 --chunk-seconds 600
                                 --holdout-pairs open:green_box ...]
    egovlp data contact-sheet --data DIR --out sheet.png [--n 12]
    egovlp data inspect --data DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from egovlpv2_edge.training.data.synth import NARRATION_STYLES, SynthConfig, generate_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egovlp data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = SynthConfig()
    s = sub.add_parser("synth", help="generate the synthetic EgoClip/EgoMCQ dataset")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--videos", type=int, default=d.videos, help="number of videos (default %(default)s)")
    s.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    s.add_argument("--fps", type=float, default=d.fps, help="frames per second (default %(default)s)")
    s.add_argument("--size", type=int, default=d.size, help="frame side in pixels (default %(default)s)")
    s.add_argument("--chunk-seconds", type=float, default=d.chunk_seconds, help="chunk length (default %(default)s)")
    s.add_argument("--min-actions", type=int, default=d.min_actions, help="actions per video, low (default 20)")
    s.add_argument("--max-actions", type=int, default=d.max_actions, help="actions per video, high (default 60)")
    s.add_argument("--holdout-pairs", nargs="*", default=[], metavar="VERB:NOUN",
                   help="verb:noun pairs kept out of train, e.g. open:green_box cut:bread")  # fmt: skip
    s.add_argument("--holdout-rate", type=float, default=d.holdout_rate,
                   help="chance an action is a held-out pair when one is possible (default %(default)s)")  # fmt: skip
    s.add_argument("--undo-rate", type=float, default=d.undo_rate,
                   help="chance an action with a reverse verb is undone by the next one, e.g. push then pull back "
                        "(default %(default)s)")  # fmt: skip
    s.add_argument("--workers", type=int, default=0, help="render processes, 0 = one per core (default 0)")
    s.add_argument("--watermark", action=argparse.BooleanOptionalAction, default=False,
                   help="write the frame index into each frame's corner (for tests)")  # fmt: skip
    s.add_argument("--head-motion", action=argparse.BooleanOptionalAction, default=True, help="camera head motion")
    s.add_argument("--narration-style", choices=NARRATION_STYLES, default=d.narration_style,
                   help="ego4d: '#C C picks up the red cup'; epic: 'pick up red cup' (EPIC-KITCHENS style, for a "
                        "fine-tuning set in another domain) (default %(default)s)")  # fmt: skip
    c = sub.add_parser("contact-sheet", help="PNG grid of sample clips with their narrations")
    c.add_argument("--data", required=True, type=Path, help="dataset folder")
    c.add_argument("--out", required=True, type=Path, help="PNG to write")
    c.add_argument("--n", type=int, default=12, help="number of clips (default %(default)s)")
    c.add_argument("--frames", type=int, default=4, help="frames per clip (default %(default)s)")
    c.add_argument("--frame-size", type=int, default=96, help="side of each frame in px (default %(default)s)")
    c.add_argument("--cols", type=int, default=2, help="clips per row (default %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="which clips are picked (default %(default)s)")
    i = sub.add_parser("inspect", help="print counts of a generated dataset")
    i.add_argument("--data", required=True, type=Path, help="dataset folder")
    return p


def _synth(args: argparse.Namespace) -> int:
    from egovlpv2_edge.progress import progress

    cfg = SynthConfig(videos=args.videos, seed=args.seed, fps=args.fps, size=args.size,
                      chunk_seconds=args.chunk_seconds, min_actions=args.min_actions, max_actions=args.max_actions,
                      holdout_pairs=tuple(args.holdout_pairs), holdout_rate=args.holdout_rate, workers=args.workers,
                      undo_rate=args.undo_rate,
                      watermark=args.watermark, head_motion=args.head_motion,
                      narration_style=args.narration_style)  # fmt: skip
    try:
        cfg.validate()
    except ValueError as err:
        print(f"egovlp data synth: {err}", file=sys.stderr)
        return 2
    with progress(total=cfg.videos, desc="rendering videos", unit="video") as bar:
        s = generate_dataset(args.out, cfg, progress=bar.update)
    print(f"wrote {s.out_dir}: {s.videos} videos, {s.clips} clips, {s.duration_s / 3600:.2f} h, {s.frames} frames "
          f"({cfg.size}x{cfg.size} @ {cfg.fps:g} fps), {s.bytes / 2**20:.1f} MiB in {s.seconds:.1f} s")  # fmt: skip
    print("clips per split: " + ", ".join(f"{k} {v}" for k, v in s.splits.items()))
    print(f"EgoMCQ: {s.mcq.get('inter', 0)} inter, {s.mcq.get('intra', 0)} intra")
    return 0


def _contact_sheet(args: argparse.Namespace) -> int:
    from egovlpv2_edge.training.data._sheet import contact_sheet

    w, h = contact_sheet(args.data, args.out, n=args.n, frames=args.frames, frame_size=args.frame_size,
                         cols=args.cols, seed=args.seed)  # fmt: skip
    print(f"wrote {args.out} ({w}x{h})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from egovlpv2_edge.training.data.egoclip import MCQ_INTRA, has_reverse_choice, read_egoclip, read_egomcq
    from egovlpv2_edge.training.data.taxonomy import reverse_verbs

    root: Path = args.data
    meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").is_file() else {}
    table = read_egoclip(root / "egoclip.csv", skip_bad=True)
    videos = {r.video_uid for r in table}
    segments = Counter(r.segment_id for r in table)
    print(f"{root}: {len(table)} clips ({table.skipped} bad rows skipped), {len(videos)} videos, "
          f"{sum({r.video_uid: r.video_dur for r in table}.values()) / 3600:.2f} h")  # fmt: skip
    print(f"segments (60 s): {len(segments)}, clips per segment: mean {len(table) / max(1, len(segments)):.1f}, "
          f"max {max(segments.values(), default=0)}")  # fmt: skip
    for name, split in meta.get("splits", {}).items():
        print(f"split {name}: {len(split['video_uids'])} videos, {len(split['clip_idx'])} clips")
    if meta:
        print(f"fps {meta['fps']}, size {meta['size']}, chunk {meta['chunk_seconds']} s, "
              f"held-out pairs {meta['holdout_pairs'] or 'none'}, generator {meta['generator_version']}")  # fmt: skip
    if (root / "egomcq.json").is_file():
        entries = read_egomcq(root / "egomcq.json")
        types = Counter(e.types for e in entries)
        reverse = reverse_verbs(root)
        against = sum(e.types == MCQ_INTRA and has_reverse_choice(e.query, e.choices, reverse) for e in entries)
        print(f"EgoMCQ: {types.get(1, 0)} inter, {types.get(2, 0)} intra ({against} with the answer's reverse action "
              "on the same object among the choices)")  # fmt: skip
    verbs = Counter(t for r in table for t in r.tag_verb)
    nouns = Counter(t for r in table for t in r.tag_noun)
    print(f"verb classes used: {len(verbs)}, noun classes used: {len(nouns)}")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"disk: {size / 2**20:.1f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp data <command>``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    return {"synth": _synth, "contact-sheet": _contact_sheet, "inspect": _inspect}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())

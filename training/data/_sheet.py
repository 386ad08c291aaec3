"""Contact sheet: a PNG grid of sample clips (several frames each) with their narration underneath (private)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from egovlpv2_edge.training.data.egoclip import read_egoclip
from egovlpv2_edge.training.data.video import ChunkedVideoStore, sample_times

PAD, TEXT_H = 4, 16


def sheet_size(n: int, frames: int, frame_size: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of ``n`` clips laid out in ``cols`` columns."""
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    return cols * frames * frame_size + (cols + 1) * PAD, rows * (frame_size + TEXT_H) + (rows + 1) * PAD


def contact_sheet(data: str | Path, out: str | Path, n: int = 12, frames: int = 4, frame_size: int = 96,
                  cols: int = 2, seed: int = 0) -> tuple[int, int]:  # fmt: skip
    """Draw ``n`` clips picked at random (one per video while videos last) into a PNG at ``out``.

    Args:
        data: Dataset folder written by ``generate_dataset``.
        out: PNG path to write.
        n: Number of clips.
        frames: Frames shown per clip (bin midpoints).
        frame_size: Side of each shown frame in pixels.
        cols: Clips per row.
        seed: Which clips are picked.

    Returns:
        (width, height) of the PNG.

    Raises:
        ValueError: If ``n`` or ``frames`` is below 1 or the dataset has no clips.
    """
    if n < 1 or frames < 1:
        raise ValueError(f"n={n} and frames={frames} must both be >= 1")
    root = Path(data)
    meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").is_file() else {}
    records = list(read_egoclip(root / "egoclip.csv"))
    if not records:
        raise ValueError(f"{root / 'egoclip.csv'} has no clips to draw")
    rng = np.random.default_rng(seed)
    order = [records[i] for i in rng.permutation(len(records))]
    picked, seen = [], set()
    for r in order:  # prefer clips from different videos
        if r.video_uid not in seen:
            picked.append(r)
            seen.add(r.video_uid)
    picked = (picked + [r for r in order if r not in picked])[:n]
    store = ChunkedVideoStore(root / "videos", meta.get("chunk_seconds", 600.0), meta.get("fps"))
    cols = max(1, min(cols, len(picked)))
    w, h = sheet_size(len(picked), frames, frame_size, cols)
    sheet = np.full((h, w, 3), 255, np.uint8)
    for k, rec in enumerate(picked):
        row, col = divmod(k, cols)
        x0, y0 = PAD + col * (frames * frame_size + PAD), PAD + row * (frame_size + TEXT_H + PAD)
        clip = store.read_frames(rec.video_uid, sample_times(rec.clip_start, rec.clip_end, frames, "eval"))
        for j, f in enumerate(clip):
            tile = cv2.resize(f, (frame_size, frame_size), interpolation=cv2.INTER_AREA)
            sheet[y0 : y0 + frame_size, x0 + j * frame_size : x0 + (j + 1) * frame_size] = tile
        cv2.putText(sheet, rec.clip_text, (x0 + 2, y0 + frame_size + TEXT_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                    (20, 20, 20), 1, cv2.LINE_AA)  # fmt: skip
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}; check that the folder is writable and the name ends in .png")
    return w, h

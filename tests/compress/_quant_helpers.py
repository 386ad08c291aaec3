"""Shared inputs of the quantize/TensorRT tests: one tiny exported FP32 package and real (tiny) videos.

Built once per test session (the export takes ~20 s on 2 cores) in a temporary folder.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

PRESET = "egovlpv2_test"
SENTENCES = [f"#C C {v} the {c} {n}" for v in ("picks up", "puts down", "opens", "wipes") for c in ("red", "blue")
             for n in ("cup", "box", "bowl")]  # fmt: skip


def _write_video(path: Path, k: int, frames: int = 30, size: tuple[int, int] = (64, 48)) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    for t in range(frames):
        img = np.full((size[1], size[0], 3), 30 * k, np.uint8)
        cv2.circle(img, (8 + t, size[1] // 2), 7, (0, 80 + 5 * t, 255 - 6 * t), -1)  # a moving "hand"
        w.write(img)
    w.release()


@functools.lru_cache(maxsize=1)
def fp32_package() -> dict[str, Path]:
    """An FP32 package of a random-init ``egovlpv2_test`` model (non-zero gates), a video folder and an EgoClip set."""
    import torch

    from egovlpv2_edge import create_model
    from egovlpv2_edge.compress.export import export_all
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import Preprocessing, build_package
    from egovlpv2_edge.tokenizer import Tokenizer

    root = Path(tempfile.mkdtemp(prefix="egovlp-quant-tests-"))
    atexit.register(shutil.rmtree, root, True)
    torch.manual_seed(0)
    model = create_model(PRESET)
    with torch.no_grad():
        for i, gate in enumerate(model.gates()):
            gate.fill_(0.5 + i)
    export_all(model, root / "graphs", validate=False)
    tok = Tokenizer.train_bpe(SENTENCES * 4, vocab_size=400, max_length=model.cfg.text.max_length)
    tok.save(root / "tokenizer.json")
    pkg = build_package(
        root / "fp32",
        config=model.cfg,
        graphs={g: {"fp32": root / "graphs" / f"{g}.onnx"} for g in GRAPH_NAMES},
        selected={g: ("fp32", "export") for g in GRAPH_NAMES},
        tokenizer=root / "tokenizer.json",
        preprocessing=Preprocessing.from_config(model.cfg, clip_seconds=2.0, stride_seconds=1.0),
        archive=False,
    )
    videos = root / "videos"
    for k in range(3):
        _write_video(videos / f"v{k}.mp4", k)
    (videos / "texts.txt").write_text("\n".join(SENTENCES) + "\n")
    egoclip = root / "egoclip"
    for k in range(2):
        _write_video(egoclip / "videos" / f"uid{k}" / "0.mp4", k)
    rows = ["clip_idx\tvideo_uid\tvideo_dur\tnarration_source\tnarration_ind\tnarration_time\tclip_start\tclip_end\t"
            "clip_text\ttag_verb\ttag_noun"]  # fmt: skip
    for i in range(6):
        rows.append(f"{i}\tuid{i % 2}\t3.0\tnarration_pass_1\t{i}\t1.0\t{0.2 * i:.1f}\t{0.2 * i + 1.5:.1f}\t"
                    f"{SENTENCES[i]}\t[0]\t[0]")  # fmt: skip
    (egoclip / "egoclip.csv").write_text("\n".join(rows) + "\n")
    (egoclip / "meta.json").write_text('{"chunk_seconds": 600.0}\n')
    return {"package": pkg, "videos": videos, "egoclip": egoclip, "root": root, "model": model}  # type: ignore[dict-item]

"""Calibration and held-out inputs for post-training quantization, from real decoded clips and real texts.

Clips are decoded and prepared exactly as on the device (:func:`egovlpv2_edge.preprocess.eval_transform` with the
package's preprocessing) and texts go through the package's tokenizer. The inputs of the upper graphs (tokens
entering the fused layers, text states) are then computed by the package's FP32 lower graphs in ONNX Runtime,
so every graph is calibrated on what it sees in deployment, not on random tensors.

Sources: an EgoClip dataset folder (``egoclip.csv`` + ``videos/<uid>/<k>.mp4`` + ``meta.json``, as written by
``egovlp data synth``), an EgoClip csv file, or a folder of video files with an optional ``texts.txt``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from egovlpv2_edge.graphs import GraphSpec

if TYPE_CHECKING:
    from egovlpv2_edge.package import Preprocessing
    from egovlpv2_edge.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
Feeds = dict[str, np.ndarray]


class CalibrationError(ValueError):
    """Calibration data is missing, empty or unreadable (the message names the path and the fix)."""


@dataclass(frozen=True)
class CalibrationData:
    """Prepared clips and tokenized texts.

    Attributes:
        frames: Preprocessed clips ``(N, F, 3, H, W)`` float32.
        input_ids: Token ids ``(M, L)`` int64.
        attention_mask: 1/0 mask ``(M, L)`` int64.
        source: Where they came from.
    """

    frames: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    source: str


def load_calibration(
    source: str | Path,
    preprocessing: Preprocessing,
    tokenizer: Tokenizer,
    *,
    texts: Sequence[str] | None = None,
    max_clips: int = 48,
    seed: int = 0,
) -> CalibrationData:
    """Decode and prepare up to ``max_clips`` clips and texts from an EgoClip dataset or a folder of videos.

    Args:
        source: EgoClip dataset folder, EgoClip csv, or a folder of video files.
        preprocessing: The package's preprocessing (frames per clip, size, mean/std, clip window).
        tokenizer: The package's tokenizer.
        texts: Texts to use instead of the dataset's narrations (needed for a folder of videos without
            ``texts.txt``).
        max_clips: Clips (and texts) to prepare, spread evenly over the source.
        seed: Seed of the clip choice.

    Raises:
        CalibrationError: The source is missing, holds no clips or no texts.
    """
    source = Path(source)
    csv = source if source.is_file() else source / "egoclip.csv"
    if csv.is_file():
        frames, narrations = _egoclip_clips(csv, preprocessing, max_clips, seed)
    elif source.is_dir():
        frames, narrations = _folder_clips(source, preprocessing, max_clips)
    else:
        raise CalibrationError(
            f"calibration source {str(source)!r} does not exist; pass an EgoClip folder (`egovlp data synth`), "
            "an egoclip.csv or a folder of videos"
        )
    texts = list(texts) if texts is not None else narrations
    if not texts:
        raise CalibrationError(
            f"no calibration texts for {str(source)!r}: add a texts.txt (one text per line) to the video folder "
            "or pass texts"
        )
    batch = tokenizer.encode(texts[:max_clips], max_length=preprocessing.text_max_length)
    logger.info("calibration: %d clips, %d texts from %s", len(frames), len(batch.input_ids), source)
    return CalibrationData(np.stack(frames), batch.input_ids, batch.attention_mask, str(source))


def _egoclip_clips(csv: Path, pre: Preprocessing, max_clips: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    from egovlpv2_edge.preprocess import eval_transform
    from egovlpv2_edge.training.data.egoclip import read_egoclip
    from egovlpv2_edge.training.data.video import ChunkedVideoStore, sample_times

    records = list(read_egoclip(csv))
    if not records:
        raise CalibrationError(f"{csv} lists no clips; regenerate it with `egovlp data synth`")
    meta = csv.parent / "meta.json"
    chunk = json.loads(meta.read_text()).get("chunk_seconds", 600.0) if meta.is_file() else 600.0
    store = ChunkedVideoStore(csv.parent / "videos", chunk_seconds=chunk)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(records), size=min(max_clips, len(records)), replace=False))
    frames, texts = [], []
    for i in picked:
        r = records[i]
        raw = store.read_frames(r.video_uid, sample_times(r.clip_start, r.clip_end, pre.frames_per_clip))
        frames.append(eval_transform(raw, pre.img_size, pre.mean, pre.std))  # (F, 3, H, W)
        texts.append(r.clip_text)
    return frames, texts


def _folder_clips(folder: Path, pre: Preprocessing, max_clips: int) -> tuple[list[np.ndarray], list[str]]:
    import cv2

    from egovlpv2_edge.preprocess import eval_transform

    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise CalibrationError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {str(folder)!r}")
    per_video = max(1, -(-max_clips // len(videos)))  # ceil
    frames: list[np.ndarray] = []
    for path in videos:
        cap = cv2.VideoCapture(str(path))
        try:
            n, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS) or 10.0
            window = max(pre.frames_per_clip, int(round(pre.clip_seconds * fps)))
            starts = np.linspace(0, max(0, n - window), per_video).astype(int)
            for s in starts:
                idx = np.linspace(s, min(n, s + window) - 1, pre.frames_per_clip).round().astype(int)
                clip = [_read_frame(cap, int(i)) for i in idx]
                if any(f is None for f in clip):
                    logger.warning("%s: unreadable frames near %d, clip skipped", path, s)
                    continue
                frames.append(eval_transform(np.stack(clip), pre.img_size, pre.mean, pre.std))
        finally:
            cap.release()
        if len(frames) >= max_clips:
            break
    if not frames:
        raise CalibrationError(f"no decodable clips under {str(folder)!r}; check the video files")
    texts_file = folder / "texts.txt"
    texts = [t.strip() for t in texts_file.read_text().splitlines() if t.strip()] if texts_file.is_file() else []
    return frames[:max_clips], texts


def _read_frame(cap: object, index: int) -> np.ndarray | None:
    import cv2

    cap.set(cv2.CAP_PROP_POS_FRAMES, index)  # type: ignore[attr-defined]
    ok, frame = cap.read()  # type: ignore[attr-defined]
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok and frame is not None else None


# ----- graph inputs ------------------------------------------------------------------------------------------------
def graph_samples(
    data: CalibrationData, fp32_paths: Mapping[str, Path], specs: Mapping[str, GraphSpec], *, threads: int = 1
) -> dict[str, list[Feeds]]:
    """Batch-1 input dicts for every graph, the upper graphs' inputs made by the FP32 lower graphs.

    Sample ``i`` of ``fused_upper`` pairs clip ``i`` with text ``i`` (texts repeat when there are fewer).

    Args:
        data: Prepared clips and texts.
        fp32_paths: Graph name -> FP32 ONNX file.
        specs: Graph specs of the model.
        threads: ONNX Runtime intra-op threads.

    Returns:
        Graph name -> list of ``{input name: array with batch 1}``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads

    def run(graph: str, feeds: Feeds) -> Feeds:
        session = ort.InferenceSession(str(fp32_paths[graph]), opts, providers=["CPUExecutionProvider"])
        outs = session.run(specs[graph].output_names, feeds)
        return dict(zip(specs[graph].output_names, outs, strict=True))

    video = run("video_lower", {"frames": data.frames.astype(np.float32)})
    text = run("text_lower", {"input_ids": data.input_ids, "attention_mask": data.attention_mask})
    n_clips, n_texts = len(data.frames), len(data.input_ids)
    pool: Feeds = {
        "frames": data.frames.astype(np.float32),
        "input_ids": data.input_ids,
        "attention_mask": data.attention_mask,
        **video,
        **text,
    }
    text_side = {"input_ids", "attention_mask", "text_tokens"}
    out: dict[str, list[Feeds]] = {}
    for name, spec in specs.items():
        uses_video = any(n not in text_side for n in spec.input_names)
        count = n_clips if uses_video else n_texts
        out[name] = [
            {k: pool[k][(i % n_texts) if k in text_side else i][None] for k in spec.input_names} for i in range(count)
        ]
    return out


def stack(samples: Sequence[Feeds], batch: int) -> Feeds:
    """One feed of ``batch`` rows from batch-1 samples (cycled when there are fewer)."""
    rows = [samples[i % len(samples)] for i in range(batch)]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

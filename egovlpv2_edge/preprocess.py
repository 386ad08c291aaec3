"""Frame preprocessing shared by training (evaluation transform) and the on-device runtime.

The evaluation transform of the reference (Resize 256 -> CenterCrop 256 -> Resize 224) scaled to the model's
input size, then ImageNet normalisation, in numpy and OpenCV only (no torch), so a clip is prepared the same way
when a teacher is evaluated and when the device encodes its camera stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def check_frames(frames: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``frames`` is uint8 ``(F, H, W, 3)`` RGB."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) RGB, got {frames.dtype} {tuple(frames.shape)}")


def normalise(
    frames: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """uint8 ``(F, H, W, 3)`` to float32 ``(F, 3, H, W)``: pixels / 255, minus mean, over std."""
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    x = (frames.astype(np.float32) * (1 / 255) - m) / s
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resize_all(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize every frame of ``(F, H, W, 3)`` to ``(F, h, w, 3)`` (bilinear)."""
    import cv2

    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])


def eval_transform(
    frames: np.ndarray, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Reference eval resize (256 -> centre crop 256 -> 224) scaled to ``size``, then normalisation.

    The short side goes to ``round(size * 256 / 224)``, a centred square of that side is cut, and resized to
    ``size``.

    Args:
        frames: uint8 (F, H, W, 3) RGB.
        size: Output side in pixels.
        mean: RGB mean.
        std: RGB std.

    Returns:
        float32 (F, 3, size, size).
    """
    check_frames(frames)
    _, h, w, _ = frames.shape
    short = int(round(size * 256 / 224))
    if w <= h:
        nw, nh = short, max(short, int(round(h * short / w)))
    else:
        nw, nh = max(short, int(round(w * short / h))), short
    resized = resize_all(frames, nw, nh)
    y0, x0 = (nh - short) // 2, (nw - short) // 2
    return normalise(resize_all(resized[:, y0 : y0 + short, x0 : x0 + short], size, size), mean, std)

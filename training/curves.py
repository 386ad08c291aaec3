"""Training curves as a PNG: one panel per group of logged keys, then the learning rate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_curves(
    history: list[dict[str, float]], path: Path, panels: Sequence[tuple[Sequence[str], str]], lr_title: str
) -> None:
    """Write ``path``: a panel per ``(keys, title)`` plotting those keys against ``step``, then ``lr``.

    Keys missing from a row plot as gaps; a key that is 0 or missing in every row (a term that is off) is left
    out. Nothing is written for an empty history.
    """
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.5 * (len(panels) + 1), 4))
    for ax, (keys, title) in zip(axes, panels, strict=False):
        for key in keys:
            values = [r.get(key, np.nan) for r in history]
            if all(v == 0 or np.isnan(v) for v in values):
                continue
            ax.plot(steps, values, label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        if ax.lines:
            ax.legend()
    axes[-1].plot(steps, [r["lr"] for r in history])
    axes[-1].set_xlabel("step")
    axes[-1].set_title(lr_title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

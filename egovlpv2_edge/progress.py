"""Progress bars that stay readable in log files.

On a terminal the bar redraws as usual; when stderr is a file or a pipe (CI, ``nohup``, the demo's logs) it
writes one line at most every ``LOG_INTERVAL_S`` seconds instead of one per update.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between bar lines when stderr is not a terminal


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar on stderr with ``dynamic_ncols``; throttled to one line per ``LOG_INTERVAL_S`` off a TTY."""
    stream = kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    if not getattr(stream, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)

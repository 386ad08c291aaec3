"""egovlpv2-edge: EgoVLPv2 (fusion in the backbone) as an edge-deployable model package.

Public surface:

* :func:`list_models`, :func:`get_config`: presets as frozen dataclasses (no torch needed).
* :func:`create_model`: build an :class:`EgoVLPv2` (imports torch on first use).
* :func:`open`: the on-device runtime over a model package, a clip index and a video source (no torch).

Importing this package never imports torch, so the on-device runtime (``egovlpv2_edge.runtime``) works in an
install without it.
"""

from __future__ import annotations

from typing import Any

from egovlpv2_edge.config import ModelConfig, get_config, list_models

__version__ = "0.1.0"

__all__ = ["EgoVLPv2", "ModelConfig", "create_model", "get_config", "list_models", "open", "__version__"]


def open(package: Any, source: Any = None, index: Any = "egovlp_index", **options: Any) -> Any:
    """Open the streaming runtime: ``egovlpv2_edge.runtime.sdk.open_runtime`` (see there for ``options``).

    Example::

        with egovlpv2_edge.open("model.egopkg", source=0, index="memory") as rt:
            rt.start()
            moments = rt.search("C picks up the red cup", k=5)

    Args:
        package: Package directory or ``.egopkg`` archive.
        source: Device index, file, RTSP/HTTP URL or GStreamer pipeline; None to query an existing index.
        index: Index directory.
        **options: Further keyword arguments of ``open_runtime``.

    Returns:
        An ``EdgeRuntime`` (context manager) with ``start``, ``stop``, ``search``, ``ask`` and ``stats``.
    """
    from egovlpv2_edge.runtime.sdk import open_runtime

    return open_runtime(package, source, index, **options)


def __getattr__(name: str) -> Any:
    # torch-backed names load lazily so torch-free installs can import the package.
    if name in ("create_model", "EgoVLPv2"):
        from egovlpv2_edge import model

        return getattr(model, name)
    raise AttributeError(f"module 'egovlpv2_edge' has no attribute {name!r}")

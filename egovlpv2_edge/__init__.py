"""egovlpv2-edge: EgoVLPv2 (fusion in the backbone) as an edge-deployable model package.

Public surface:

* :func:`list_models`, :func:`get_config`: presets as frozen dataclasses (no torch needed).
* :func:`create_model`: build an :class:`EgoVLPv2` (imports torch on first use).

Importing this package never imports torch, so the on-device runtime (``egovlpv2_edge.runtime``) works in an
install without it.
"""

from __future__ import annotations

from typing import Any

from egovlpv2_edge.config import ModelConfig, get_config, list_models

__version__ = "0.1.0"

__all__ = ["EgoVLPv2", "ModelConfig", "create_model", "get_config", "list_models", "__version__"]


def __getattr__(name: str) -> Any:
    # torch-backed names load lazily so torch-free installs can import the package.
    if name in ("create_model", "EgoVLPv2"):
        from egovlpv2_edge import model

        return getattr(model, name)
    raise AttributeError(f"module 'egovlpv2_edge' has no attribute {name!r}")

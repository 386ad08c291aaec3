"""TensorRT for the package graphs: ONNX Runtime TensorRT-EP settings (pure Python) and Torch-TensorRT engines.

Two parts:

* :func:`trt_settings` makes, per graph, the TensorRT execution-provider options the runtime passes to
  ``ort.InferenceSession``: engine and timing caches (under a ``{cache_dir}`` the device fills in, as the package
  may be read-only), one explicit shape profile (min/opt/max) from the graph spec's dynamic axes so a new batch size
  never triggers an engine rebuild, FP16/INT8 flags, a workspace cap and LayerNorm in FP32. INT8 is enabled only
  for a graph whose package file is an explicit QDQ graph (NNCF); an ORT dynamic-quant graph (``MatMulInteger``) is
  not TensorRT material, so its FP32 file is used with FP16. Needs no torch, CUDA or TensorRT; tested on CPU.
* :func:`build_engines` compiles the graphs from the PyTorch model with Torch-TensorRT (``ir="dynamo"``, the same
  profiles) and saves them; it needs CUDA and the ``tensorrt`` extra and says what to install otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egovlpv2_edge.graphs import GraphSpec

if TYPE_CHECKING:
    from torch import nn

    from egovlpv2_edge.model import EgoVLPv2

logger = logging.getLogger(__name__)

PROVIDER = "TensorrtExecutionProvider"
SETTINGS_FORMAT = 1
CACHE_DIR = "{cache_dir}"  # filled in on the device by ModelPackage.provider_options
INSTALL_HINT = (
    "TensorRT engines need an NVIDIA GPU with CUDA and the tensorrt extra: "
    "pip install 'egovlpv2-edge[tensorrt]' (torch-tensorrt and tensorrt matching your torch and CUDA; on Jetson use "
    "the JetPack wheels from the jetson-ai-lab index or a jetson-containers image)"
)
# ops that mark an explicit-quantization (QDQ) graph, which TensorRT runs in INT8
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_NOT_FOR_TRT_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv", "ConvInteger"}


class TensorRTUnavailableError(RuntimeError):
    """CUDA, ``tensorrt`` or ``torch_tensorrt`` is missing; the message says what to install."""


@dataclass(frozen=True)
class Profile:
    """Batch sizes of one TensorRT optimisation profile.

    Attributes:
        min_batch: Smallest batch the engine accepts.
        opt_batch: Batch the kernels are tuned for.
        max_batch: Largest batch the engine accepts.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"profile batches must satisfy 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/"
                f"{self.max_batch}"
            )


def shape_profile(spec: GraphSpec, profile: Profile) -> dict[str, str]:
    """The ``trt_profile_{min,opt,max}_shapes`` strings of a graph, every dynamic axis set from ``profile``.

    Example: ``{"trt_profile_min_shapes": "frames:1x4x3x64x64", ...}``; inputs joined by commas.
    """
    out = {}
    for key, batch in (("min", profile.min_batch), ("opt", profile.opt_batch), ("max", profile.max_batch)):
        parts = [f"{t.name}:{'x'.join(str(d) for d in t.concrete(batch))}" for t in spec.inputs]
        out[f"trt_profile_{key}_shapes"] = ",".join(parts)
    return out


def graph_kind(path: str | Path) -> str:
    """``"qdq"`` (explicit INT8), ``"ort_int8"`` (dynamic/QOperator: not for TensorRT) or ``"float"``."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if ops & _NOT_FOR_TRT_OPS:
        return "ort_int8"
    return "qdq" if ops & _QDQ_OPS else "float"


def trt_options(
    spec: GraphSpec,
    *,
    profile: Profile,
    fp16: bool = True,
    int8: bool = False,
    workspace_mb: int = 1024,
    builder_level: int = 3,
) -> dict[str, str]:
    """The TensorRT-EP options of one graph (values as strings, as ONNX Runtime parses them)."""
    flag = {True: "True", False: "False"}
    return {
        "trt_fp16_enable": flag[fp16],
        "trt_int8_enable": flag[int8],
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": f"{CACHE_DIR}/engines",
        "trt_engine_cache_prefix": spec.name,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": f"{CACHE_DIR}/timing",
        "trt_max_workspace_size": str(workspace_mb << 20),
        "trt_builder_optimization_level": str(builder_level),
        "trt_layer_norm_fp32_fallback": "True",  # FP16 LayerNorm overflows in ViT/BERT (TensorRT#2564)
        **shape_profile(spec, profile),
    }


def trt_settings(
    specs: Mapping[str, GraphSpec],
    files: Mapping[str, Mapping[str, str | Path]],
    selected: Mapping[str, str],
    *,
    profiles: Mapping[str, Profile] | None = None,
    fp16: bool = True,
    int8: bool = True,
    workspace_mb: int = 1024,
) -> dict[str, Any]:
    """TensorRT-EP settings for every graph of a package (the content of ``providers/tensorrt.json``).

    Per graph, the package file TensorRT should load: the selected precision when it is FP32, FP16 or an explicit
    QDQ INT8 graph (INT8 enabled when ``int8``), else FP32 (an ORT dynamic-quant graph), with FP16 when ``fp16``.

    Args:
        specs: Graph specs.
        files: Graph -> precision -> ONNX file (to tell QDQ from ORT-only INT8).
        selected: Graph -> the package's selected precision.
        profiles: Graph -> batch profile; ``Profile()`` (1/1/16) for graphs left out.
        fp16: Allow FP16 kernels.
        int8: Allow INT8 for QDQ graphs.
        workspace_mb: TensorRT workspace cap per engine (Jetson builds run out of memory without one).

    Returns:
        ``{"format", "provider", "fallback", "graphs": {graph: {"precision", "options"}}}``.
    """
    graphs = {}
    for name, spec in specs.items():
        precision = selected[name]
        kind = graph_kind(files[name][precision])
        if kind == "ort_int8":
            logger.info("%s: %s is an ONNX Runtime INT8 graph; TensorRT gets fp32 instead", name, precision)
            precision, kind = "fp32", "float"
        profile = (profiles or {}).get(name, Profile())
        options = trt_options(spec, profile=profile, fp16=fp16, int8=int8 and kind == "qdq", workspace_mb=workspace_mb)
        graphs[name] = {"precision": precision, "options": options}
    return {
        "format": SETTINGS_FORMAT,
        "provider": PROVIDER,
        "fallback": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "graphs": graphs,
    }


def write_trt_settings(settings: Mapping[str, Any], path: str | Path) -> Path:
    """Write settings as JSON (sorted keys, so the package bytes are stable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return path


# ----- Torch-TensorRT engines --------------------------------------------------------------------------------------
def require_tensorrt() -> Any:
    """Import ``torch_tensorrt`` after checking CUDA.

    Raises:
        TensorRTUnavailableError: No CUDA device, or ``tensorrt``/``torch_tensorrt`` not installed.
    """
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(f"no CUDA device visible to torch {torch.__version__}. {INSTALL_HINT}")
    try:
        import tensorrt  # noqa: F401
        import torch_tensorrt
    except ImportError as err:
        raise TensorRTUnavailableError(f"{err.name or 'tensorrt'} is not installed. {INSTALL_HINT}") from err
    return torch_tensorrt


def build_engines(
    model: EgoVLPv2,
    specs: Mapping[str, GraphSpec],
    out_dir: str | Path,
    *,
    profiles: Mapping[str, Profile] | None = None,
    fp16: bool = True,
    graphs: Sequence[str] | None = None,
    qa_head: nn.Module | None = None,
) -> dict[str, Path]:
    """Compile graphs with Torch-TensorRT (dynamo) and save each as ``<graph>.ep`` (an ExportedProgram).

    Args:
        model: The PyTorch model.
        specs: Graph specs (inputs and their dynamic batch axis).
        out_dir: Output folder.
        profiles: Graph -> batch profile (``Profile()`` when left out).
        fp16: Run the compiled graphs in FP16 (weights cast; inputs stay float32 at the boundary).
        graphs: Graph names to build; all when None.
        qa_head: The QA head ``fused_upper`` returns ``qa_logits`` of (``specs`` must then list that output).

    Raises:
        TensorRTUnavailableError: No CUDA or no TensorRT; the message says what to install.
    """
    import torch

    from egovlpv2_edge.compress.export import graph_module

    trt = require_tensorrt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in graphs or list(specs):
        spec, profile = specs[name], (profiles or {}).get(name, Profile())
        module = graph_module(model, name, qa_head).eval().cuda()
        dtypes = [torch.int64 if t.dtype == "int64" else torch.float32 for t in spec.inputs]
        inputs = [
            trt.Input(
                min_shape=t.concrete(profile.min_batch),
                opt_shape=t.concrete(profile.opt_batch),
                max_shape=t.concrete(profile.max_batch),
                dtype=dtype,
            )
            for t, dtype in zip(spec.inputs, dtypes, strict=True)
        ]
        precisions = {torch.float16, torch.float32} if fp16 else {torch.float32}
        compiled = trt.compile(module, ir="dynamo", inputs=inputs, enabled_precisions=precisions)
        example = [
            torch.zeros(t.concrete(profile.opt_batch), dtype=d).cuda() for t, d in zip(spec.inputs, dtypes, strict=True)
        ]
        built[name] = out / f"{name}.ep"
        trt.save(compiled, str(built[name]), inputs=example)
        logger.info("built TensorRT engine %s", built[name])
    return built

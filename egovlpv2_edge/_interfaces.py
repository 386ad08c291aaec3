"""Reading a graph file's real ONNX interface and comparing it with the manifest (``onnx`` or ``onnxruntime``).

A runtime-only device has ``onnxruntime`` but maybe not ``onnx``: then an onnxruntime CPU session (no graph
optimisation) reports the interface instead. Neither installed: the check is skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from egovlpv2_edge._package_errors import REBUILD as _REBUILD
from egovlpv2_edge._package_errors import RECOPY as _RECOPY
from egovlpv2_edge._package_errors import GraphMismatchError

if TYPE_CHECKING:
    from egovlpv2_edge._manifest import TensorInfo

logger = logging.getLogger(__name__)

# ONNX TensorProto element types by number (stable across onnx releases; no onnx import needed).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}
_ONNX_DTYPES |= {11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
_ORT_DTYPES = {f"tensor({k})": v for k, v in [("float", "float32"), ("double", "float64"), ("float16", "float16")]}
_ORT_DTYPES |= {f"tensor({t})": t for t in ("int8", "uint8", "int16", "int32", "int64", "uint32", "uint64", "bool")}
_ORT_DTYPES["tensor(bfloat16)"] = "bfloat16"
# importlib.metadata distribution names recorded in the manifest (first installed one wins).
_Actual = dict[str, tuple[str, tuple[int | str, ...] | None]]  # name -> (dtype, shape or None when undeclared)


class HasInterface(Protocol):
    """Anything with manifest-style ``inputs`` and ``outputs`` (a :class:`~egovlpv2_edge.package.GraphEntry`)."""

    inputs: Sequence[TensorInfo]
    outputs: Sequence[TensorInfo]


def check_graph_file(graph: str, entry: HasInterface, path: Path, label: str) -> str:
    """Compare a graph file's real inputs/outputs with ``entry``; returns the reader used."""
    read = read_interface(path, f"graph {graph!r} ({label})")
    if read is None:
        return "skipped"
    inputs, outputs, reader = read
    for kind, want, have in (("input", entry.inputs, inputs), ("output", entry.outputs, outputs)):
        names = [t.name for t in want]
        if set(names) != set(have) or len(names) != len(have):
            raise GraphMismatchError(
                f"graph {graph!r} ({label}): {kind} names differ: manifest {names}, file {list(have)} "
                f"(missing {[n for n in names if n not in have]}, unexpected {[n for n in have if n not in names]}); "
                f"re-export the graph to match egovlpv2_edge.graphs and {_REBUILD}"
            )
        for t in want:
            dtype, shape = have[t.name]
            problem = f"dtype {dtype} vs {t.dtype}" if dtype != t.dtype else _shape_problem(t.shape, shape)
            if problem:
                raise GraphMismatchError(
                    f"graph {graph!r} ({label}): {kind} {t.name!r} is {dtype}{list(shape or ['?'])} in the file but "
                    f"{t.dtype}{list(t.shape)} in the manifest ({problem}); re-export the graph and {_REBUILD}"
                )
    return reader


def _shape_problem(want: tuple[int | str, ...], have: tuple[int | str, ...] | None) -> str:
    if have is None:
        return "the file declares no shape"
    if len(want) != len(have):
        return f"rank {len(have)} vs {len(want)}"
    for i, (w, h) in enumerate(zip(want, have, strict=True)):
        if isinstance(w, str) and not isinstance(h, str):
            return f"dim {i} ({w!r}) must be dynamic, the file fixes it to {h}"
        if isinstance(w, int) and w != h:
            return f"dim {i} is {h}, expected {w}"
    return ""


def read_interface(path: Path, label: str) -> tuple[_Actual, _Actual, str] | None:
    try:
        import onnx
    except ImportError:
        return _read_interface_ort(path, label)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError and friends
        raise GraphMismatchError(f"{label} is not a readable ONNX model ({err}); {_RECOPY}") from err
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise GraphMismatchError(
            f"{label} keeps weights in external data files ({external[:3]}...); packages hold self-contained graphs: "
            f"re-export with the weights inside the .onnx and {_REBUILD}"
        )
    weights = {t.name for t in model.graph.initializer}
    ins = {v.name: _onnx_tensor(v) for v in model.graph.input if v.name not in weights}
    return ins, {v.name: _onnx_tensor(v) for v in model.graph.output}, "onnx"


def _onnx_tensor(value: Any) -> tuple[str, tuple[int | str, ...] | None]:
    if not value.type.HasField("tensor_type"):
        return "non-tensor", None
    t = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(t.elem_type, f"onnx-type-{t.elem_type}")
    if not t.HasField("shape"):
        return dtype, None
    return dtype, tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)


def _read_interface_ort(path: Path, label: str) -> tuple[_Actual, _Actual, str] | None:
    """Fallback without ``onnx`` (runtime-only installs): ask an onnxruntime CPU session."""
    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning("neither onnx nor onnxruntime is installed: graph interfaces of %s are not checked", label)
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise GraphMismatchError(f"{label} does not load in onnxruntime ({err}); {_RECOPY}") from err

    def table(args: list[Any]) -> _Actual:
        return {
            a.name: (_ORT_DTYPES.get(a.type, a.type), tuple(d if isinstance(d, int) else (d or "?") for d in a.shape))
            for a in args
        }

    return table(session.get_inputs()), table(session.get_outputs()), "onnxruntime"

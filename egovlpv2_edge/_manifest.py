"""The manifest types of a model package: what ``manifest.json`` holds, parsed into frozen dataclasses.

:mod:`egovlpv2_edge.package` re-exports every public name here; import them from there.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from egovlpv2_edge._archive import unsafe_path
from egovlpv2_edge._package_errors import REBUILD as _REBUILD
from egovlpv2_edge._package_errors import ManifestError, SchemaVersionError
from egovlpv2_edge.config import ModelConfig
from egovlpv2_edge.graphs import TensorSpec, qa_answer_count

SCHEMA_VERSION = 1  # bump on any incompatible manifest change
SUPPORTED_SCHEMA_VERSIONS = (1,)
PRECISION_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as recorded in the manifest (a copy of a :class:`~graphs.TensorSpec`).

    Attributes:
        name: ONNX value name.
        dtype: Element type (``"float32"``, ``"int64"``, ...).
        shape: Sizes; a string names a dynamic axis (``"batch"``).
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorInfo:
        """Copy a graph spec's tensor."""
        return cls(spec.name, spec.dtype, tuple(spec.shape))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


@dataclass(frozen=True)
class FileEntry:
    """A file inside the package.

    Attributes:
        file: Path relative to the package root, ``/``-separated.
        sha256: Hex digest of the content.
        size: Size in bytes.
    """

    file: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        """Inverse of :meth:`to_dict`; rejects paths that leave the package."""
        entry = cls(str(data["file"]), str(data["sha256"]), int(data["size"]))
        _check_relative(entry.file)
        return entry


@dataclass(frozen=True)
class PrecisionCandidate:
    """One precision measured for a graph when its precision was chosen (the record behind ``selected``).

    Attributes:
        precision: Precision name (``"fp32"``, ``"int8"``, ``"int8_dynamic"``, ``"fp16"``, ...).
        method: How the variant was made, e.g. ``"export"``, ``"nncf_ptq"``, ``"ort_dynamic"``, ``"fp16_convert"``.
        latency_ms: Median latency by batch (``"batch1"``, ``"batch8"``); empty when it could not run.
        drift: Accuracy drift against FP32 on held-out inputs, e.g. ``min_cosine``, ``max_abs_diff``,
            ``accuracy_drop`` (empty for the reference itself).
        accepted: Whether it passed the selection rule (fast enough and accurate enough).
        note: Why it was accepted or rejected, or the error that stopped it.
    """

    precision: str
    method: str
    latency_ms: dict[str, float] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    accepted: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if not PRECISION_RE.match(self.precision):
            raise ValueError(f"candidate precision {self.precision!r} is invalid; use lowercase names like int8")
        for key, value in [*self.latency_ms.items(), *self.drift.items()]:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"candidate {self.precision!r}: {key} = {value!r} must be a finite number")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionCandidate:
        """Inverse of :meth:`to_dict`."""
        return cls(
            precision=str(data["precision"]),
            method=str(data["method"]),
            latency_ms={str(k): float(v) for k, v in data.get("latency_ms", {}).items()},
            drift={str(k): float(v) for k, v in data.get("drift", {}).items()},
            accepted=bool(data.get("accepted", False)),
            note=str(data.get("note", "")),
        )


@dataclass(frozen=True)
class GraphEntry:
    """One graph: its interface, its files by precision and the precision the runtime uses.

    A package may hold one precision per graph (the chosen one) or several (e.g. ``fp32`` and ``int8``); the
    runtime loads ``selected`` unless asked for another. ``candidates`` records every precision that was measured
    when ``selected`` was chosen, kept in the package or not, with its latency, drift and verdict.

    Attributes:
        inputs: Input tensors in call order (shared by every precision: FP16/INT8 keep float32 boundaries).
        outputs: Output tensors in return order.
        files: Precision (``"fp32"``, ``"int8"``, ...) -> the ONNX file.
        selected: The precision the runtime loads.
        reason: Why it was selected, e.g. ``"int8 1.7x faster, -0.3 R@1"``.
        opset: The ONNX opset of the spec the graph was exported against.
        candidates: The precisions measured for the choice (empty when chosen by hand).
        measured_on: Where the candidates were measured (runtime, provider, threads, CPU), if they were.
    """

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    files: dict[str, FileEntry]
    selected: str
    reason: str
    opset: int
    candidates: tuple[PrecisionCandidate, ...] = ()
    measured_on: str = ""

    def __post_init__(self) -> None:
        if self.selected not in self.files:
            raise ValueError(f"selected precision {self.selected!r} has no file; precisions: {sorted(self.files)}")
        if not self.reason.strip():
            raise ValueError("the selected precision needs a non-empty reason")
        names = [c.precision for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate precisions {names} repeat a name")
        if self.candidates and self.selected not in names:
            raise ValueError(f"selected precision {self.selected!r} is not among the measured candidates {names}")

    def candidate(self, precision: str) -> PrecisionCandidate | None:
        """The measurement record of one precision, or None when it was not measured."""
        return next((c for c in self.candidates if c.precision == precision), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphEntry:
        """Inverse of :meth:`to_dict` (``candidates`` and ``measured_on`` are optional: older manifests lack them)."""
        return cls(
            inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            files={str(p): FileEntry.from_dict(e) for p, e in data["files"].items()},
            selected=str(data["selected"]),
            reason=str(data["reason"]),
            opset=int(data["opset"]),
            candidates=tuple(PrecisionCandidate.from_dict(c) for c in data.get("candidates", [])),
            measured_on=str(data.get("measured_on", "")),
        )


@dataclass(frozen=True)
class Preprocessing:
    """How the runtime turns video and text into graph inputs.

    Attributes:
        frames_per_clip: Frames sampled per clip (the model's ``video.num_frames``).
        img_size: Square frame size after resizing/cropping.
        mean: RGB normalisation mean (pixels scaled to [0, 1] first).
        std: RGB normalisation std.
        clip_seconds: Length of the clip window the frames are sampled from.
        stride_seconds: Step between consecutive clip windows when indexing a stream.
        text_max_length: Tokens per text after padding/truncation.
    """

    frames_per_clip: int
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    clip_seconds: float
    stride_seconds: float
    text_max_length: int

    def __post_init__(self) -> None:
        for key in ("frames_per_clip", "img_size", "text_max_length", "clip_seconds", "stride_seconds"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"preprocessing.{key} must be a positive number, got {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"preprocessing mean/std must be 3 RGB values, std > 0; got {self.mean}, {self.std}")

    @classmethod
    def from_config(cls, cfg: ModelConfig, clip_seconds: float, stride_seconds: float) -> Preprocessing:
        """The preprocessing a model config fixes, plus the clip window the runtime slides over a stream.

        Args:
            cfg: The model config (frames, image size, mean/std, text length).
            clip_seconds: Clip window length in seconds.
            stride_seconds: Step between windows in seconds.
        """
        v = cfg.video
        return cls(v.num_frames, v.img_size, v.mean, v.std, clip_seconds, stride_seconds, cfg.text.max_length)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class Manifest:
    """The content of ``manifest.json``: everything needed to check and run a package.

    Attributes:
        name: Package name (also its directory and archive stem).
        version: Package version, e.g. ``"0.1.0"``.
        created: Build time, ISO 8601 UTC.
        preset: Name of the model preset the config came from.
        config: The full model config (:meth:`ModelConfig.to_dict`).
        preprocessing: Frame/text preprocessing the graphs expect.
        graphs: Graph name -> entry, in :data:`~graphs.GRAPH_NAMES` order.
        tokenizer: The ``tokenizer.json`` file.
        fusion: Fused layer count and gate semantics.
        answer_vocabs: Head name -> answer strings (index = class id); may be empty.
        heads: Extra files under ``heads/`` by name; may be empty.
        providers: Execution-provider settings under ``providers/`` by name (``"tensorrt"``: TensorRT-EP options,
            shape profiles and caches per graph, see :meth:`~egovlpv2_edge.package.ModelPackage.provider_options`);
            may be empty.
        source_checkpoint_sha256: Hash of the checkpoint the graphs were exported from, if known.
        metrics: Stage (``"fp32"``, ``"int8"``, ...) -> metric -> value (accuracy and speed); may be empty.
        libraries: Library versions at build time.
        git_revision: Source revision at build time (``+dirty`` with uncommitted changes), if known.
        schema_version: Manifest schema version.
    """

    name: str
    version: str
    created: str
    preset: str
    config: dict[str, Any]
    preprocessing: Preprocessing
    graphs: dict[str, GraphEntry]
    tokenizer: FileEntry
    fusion: dict[str, Any]
    answer_vocabs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    heads: dict[str, FileEntry] = field(default_factory=dict)
    providers: dict[str, FileEntry] = field(default_factory=dict)
    source_checkpoint_sha256: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    git_revision: str | None = None
    schema_version: int = SCHEMA_VERSION

    def model_config(self) -> ModelConfig:
        """The model config as a :class:`ModelConfig`."""
        return ModelConfig.from_dict(self.config)

    def files(self) -> list[FileEntry]:
        """Every listed file: graphs (manifest order), tokenizer, heads, provider settings."""
        out = [e for g in self.graphs.values() for e in g.files.values()]
        return out + [self.tokenizer, *self.heads.values(), *self.providers.values()]

    def qa_answers(self) -> int | None:
        """Answer count of the QA head the fused graph carries (its ``qa_logits`` output), or None without one.

        Raises:
            ManifestError: The output is recorded with a shape other than ``(batch, A)``.
        """
        fused = self.graphs.get("fused_upper")
        try:
            return None if fused is None else qa_answer_count(fused.outputs)
        except ValueError as err:
            raise ManifestError(f"graph 'fused_upper': {err}; {_REBUILD}") from err

    def selected(self) -> dict[str, FileEntry]:
        """Graph name -> the file of its selected precision."""
        return {name: g.files[g.selected] for name, g in self.graphs.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict, ``schema_version`` first."""
        return {"schema_version": self.schema_version, **_plain(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse a manifest dict.

        Raises:
            SchemaVersionError: ``schema_version`` is not in :data:`SUPPORTED_SCHEMA_VERSIONS`.
            ManifestError: A field is missing or malformed.
        """
        version = _schema_version(data)
        try:
            return cls(
                schema_version=version,
                name=str(data["name"]),
                version=str(data["version"]),
                created=str(data["created"]),
                preset=str(data["preset"]),
                config=dict(data["config"]),
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                graphs={str(n): GraphEntry.from_dict(g) for n, g in data["graphs"].items()},
                tokenizer=FileEntry.from_dict(data["tokenizer"]),
                fusion=dict(data["fusion"]),
                answer_vocabs={str(n): tuple(map(str, v)) for n, v in data.get("answer_vocabs", {}).items()},
                heads={str(n): FileEntry.from_dict(e) for n, e in data.get("heads", {}).items()},
                providers={str(n): FileEntry.from_dict(e) for n, e in data.get("providers", {}).items()},
                source_checkpoint_sha256=data.get("source_checkpoint_sha256"),
                metrics={str(s): {str(k): float(v) for k, v in m.items()} for s, m in data.get("metrics", {}).items()},
                libraries={str(k): str(v) for k, v in data.get("libraries", {}).items()},
                git_revision=data.get("git_revision"),
            )
        except KeyError as err:
            raise ManifestError(f"manifest lacks the field {err}; {_REBUILD}") from err
        except (TypeError, ValueError, AttributeError) as err:
            raise ManifestError(f"manifest is malformed ({err}); {_REBUILD}") from err


def _plain(obj: Any) -> Any:
    """Dataclasses -> dicts and tuples -> lists, recursively (the JSON form of the manifest types)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _check_relative(file: str) -> None:
    if unsafe_path(file):
        raise ValueError(f"file path {file!r} must be relative to the package root, without '..'")


def _schema_version(data: Mapping[str, Any]) -> int:
    if not isinstance(data, Mapping) or "schema_version" not in data:
        raise ManifestError(f"manifest has no schema_version: it is not an egovlpv2-edge manifest; {_REBUILD}")
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ManifestError(f"manifest schema_version must be an int, got {version!r}; {_REBUILD}")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise SchemaVersionError(
            f"manifest schema_version {version} is not supported (this egovlpv2-edge reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); upgrade egovlpv2-edge or {_REBUILD} of this version"
        )
    return version

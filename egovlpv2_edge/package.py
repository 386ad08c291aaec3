"""The versioned, verifiable model package: ONNX graphs + tokenizer + manifest, as a directory or one file.

A package is what the compress step ships and the on-device runtime loads (the "Compression" deliverable; the
graphs implement EgoVLPv2's gate switch, arXiv 2307.05463 Sec. 3, split as in :mod:`egovlpv2_edge.graphs`)::

    <name>/
      manifest.json                    schema_version, config, preprocessing, hashes, interfaces, metrics
      graphs/<graph>.<precision>.onnx  one or more precisions per graph (fp32, int8, fp16, ...)
      tokenizer.json
      heads/<name>.json                optional extra files (answer-vocabulary heads etc.)

The single-file form ``<name>.egopkg`` is an uncompressed POSIX tar of that directory: members under one
top-level ``<name>/`` folder, ``manifest.json`` first, then the listed files in manifest order, with fixed
owners, modes and times, so the same package always gives the same bytes. Extraction refuses absolute,
``..``, link and device members.

Every file is listed in the manifest with its size and sha256; the manifest is written last (temp file, fsync,
``os.replace``), so a build killed half-way leaves no ``manifest.json`` and never a package that looks valid.
:func:`verify_package` checks the schema version, presence, hashes, each graph's real ONNX interface against the
manifest and the tokenizer; :func:`open_package` verifies before it returns anything usable.

This module imports no torch: the runtime loads packages on devices without it. ``onnx`` is imported only to
read graph interfaces (``onnxruntime`` instead where ``onnx`` is not installed, as on a runtime-only device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import tarfile
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from egovlpv2_edge.config import ModelConfig
from egovlpv2_edge.graphs import GRAPH_NAMES, TensorSpec, graph_specs
from egovlpv2_edge.runconfig import git_revision as _git_revision

if TYPE_CHECKING:
    from egovlpv2_edge.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump on any incompatible manifest change
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
ARCHIVE_SUFFIX = ".egopkg"
GATE_SEMANTICS = "one scalar per fused layer and side, added without tanh; 0 = unimodal (dual), else fused"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PRECISION_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_REBUILD = "rebuild the package with `egovlp package build`"
_RECOPY = "re-download/copy the package (or rebuild it with `egovlp package build`)"
# ONNX TensorProto element types by number (stable across onnx releases; no onnx import needed).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}
_ONNX_DTYPES |= {11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
_ORT_DTYPES = {f"tensor({k})": v for k, v in [("float", "float32"), ("double", "float64"), ("float16", "float16")]}
_ORT_DTYPES |= {f"tensor({t})": t for t in ("int8", "uint8", "int16", "int32", "int64", "uint32", "uint64", "bool")}
_ORT_DTYPES["tensor(bfloat16)"] = "bfloat16"
# importlib.metadata distribution names recorded in the manifest (first installed one wins).
_LIBRARIES = {
    "egovlpv2-edge": ("egovlpv2-edge",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tokenizers": ("tokenizers",),
    "torch": ("torch",),
}


# ------------------------------------------------------------------------------------------------- errors
class PackageError(ValueError):
    """A model package is invalid, incomplete or corrupt; the message names the problem and the fix."""


class ManifestError(PackageError):
    """``manifest.json`` is not valid JSON, lacks a field, or contradicts the model config."""


class SchemaVersionError(PackageError):
    """The manifest's ``schema_version`` is not one this version of egovlpv2-edge can read."""


class MissingFileError(PackageError):
    """A file the manifest lists (or the manifest itself) is not in the package."""


class ChecksumError(PackageError):
    """A file's size or sha256 differs from the manifest: the file is corrupt or was replaced."""


class GraphMismatchError(PackageError):
    """A graph's ONNX inputs/outputs differ from the manifest (or the manifest from the graph specs)."""


class UnsafeArchiveError(PackageError):
    """An ``.egopkg`` member would escape the extraction folder or is not a regular file."""


# ---------------------------------------------------------------------------------------------- manifest
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
class GraphEntry:
    """One graph: its interface, its files by precision and the precision the runtime uses.

    Attributes:
        inputs: Input tensors in call order (shared by every precision: FP16/INT8 keep float32 boundaries).
        outputs: Output tensors in return order.
        files: Precision (``"fp32"``, ``"int8"``, ...) -> the ONNX file.
        selected: The precision the runtime loads.
        reason: Why it was selected, e.g. ``"int8 1.7x faster, -0.3 R@1"``.
        opset: The ONNX opset of the spec the graph was exported against.
    """

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    files: dict[str, FileEntry]
    selected: str
    reason: str
    opset: int

    def __post_init__(self) -> None:
        if self.selected not in self.files:
            raise ValueError(f"selected precision {self.selected!r} has no file; precisions: {sorted(self.files)}")
        if not self.reason.strip():
            raise ValueError("the selected precision needs a non-empty reason")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphEntry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            files={str(p): FileEntry.from_dict(e) for p, e in data["files"].items()},
            selected=str(data["selected"]),
            reason=str(data["reason"]),
            opset=int(data["opset"]),
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
    source_checkpoint_sha256: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    git_revision: str | None = None
    schema_version: int = SCHEMA_VERSION

    def model_config(self) -> ModelConfig:
        """The model config as a :class:`ModelConfig`."""
        return ModelConfig.from_dict(self.config)

    def files(self) -> list[FileEntry]:
        """Every listed file: graphs (manifest order), tokenizer, heads."""
        out = [e for g in self.graphs.values() for e in g.files.values()]
        return out + [self.tokenizer, *self.heads.values()]

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


def _unsafe_path(name: str) -> bool:
    """True for a path that is empty, absolute (POSIX or Windows) or climbs out with ``..``."""
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    return not parts or name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in parts[0]


def _check_relative(file: str) -> None:
    if _unsafe_path(file):
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


# ------------------------------------------------------------------------------------------------- build
def build_package(
    out_dir: str | Path,
    *,
    config: ModelConfig,
    graphs: Mapping[str, Mapping[str, str | Path]],
    selected: Mapping[str, tuple[str, str]],
    tokenizer: str | Path,
    preprocessing: Preprocessing,
    answer_vocabs: Mapping[str, Sequence[str]] | None = None,
    heads: Mapping[str, str | Path] | None = None,
    source_checkpoint: str | Path | None = None,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    version: str = "0.1.0",
    archive: bool = True,
    overwrite: bool = False,
) -> Path:
    """Assemble and verify a package directory (and its ``.egopkg`` archive beside it).

    Files are copied in and hashed, the manifest is written last and atomically, the result is verified, then the
    archive is written atomically. A build that dies earlier leaves no ``manifest.json``, so nothing looks valid.

    Args:
        out_dir: The package directory; its name is the package name. Must be new or empty, unless ``overwrite``.
        config: The model config the graphs were exported from.
        graphs: Graph name -> precision -> ONNX file; every graph in :data:`~graphs.GRAPH_NAMES` is required.
        selected: Graph name -> (precision the runtime uses, why it was chosen).
        tokenizer: A ``tokenizer.json`` file.
        preprocessing: Preprocessing spec; must agree with ``config``.
        answer_vocabs: Head name -> answer strings, stored in the manifest.
        heads: Name -> extra JSON file, stored as ``heads/<name>.json``.
        source_checkpoint: The checkpoint file the graphs came from (hashed), or its sha256 hex digest.
        metrics: Stage -> metric -> value (accuracy and speed).
        version: Package version.
        archive: Also write ``<out_dir>.egopkg``.
        overwrite: Replace an existing package in ``out_dir``.

    Returns:
        The package directory.

    Raises:
        PackageError: An argument or input file is invalid, or ``out_dir`` holds something else (a typed subclass).
    """
    out = Path(out_dir)
    _check_build_args(out, config, graphs, selected, preprocessing, version)
    entries = _checked_graph_entries(config, graphs, selected, [tokenizer, *(heads or {}).values()])
    _check_tokenizer(Path(tokenizer), preprocessing.text_max_length, config)
    vocabs, sha, checked = (
        _check_vocabs(answer_vocabs or {}),
        _checkpoint_sha(source_checkpoint),
        _check_metrics(metrics or {}),
    )
    _prepare_out_dir(out, overwrite)
    manifest = _copy_files(out, config, preprocessing, entries, graphs, tokenizer, heads or {}, version)
    _commit(
        out, dataclasses.replace(manifest, answer_vocabs=vocabs, source_checkpoint_sha256=sha, metrics=checked), archive
    )
    return out


def _copy_files(
    out: Path,
    config: ModelConfig,
    preprocessing: Preprocessing,
    entries: dict[str, GraphEntry],
    graphs: Mapping[str, Mapping[str, str | Path]],
    tokenizer: str | Path,
    heads: Mapping[str, str | Path],
    version: str,
) -> Manifest:
    """Copy (and hash) every file into ``out``; returns the manifest describing them."""
    for name, entry in entries.items():
        files = {p: _copy_in(Path(graphs[name][p]), out, e.file) for p, e in entry.files.items()}
        entries[name] = dataclasses.replace(entry, files=files)
    return Manifest(
        name=out.name,
        version=version,
        created=_now_iso(),
        preset=config.name,
        config=config.to_dict(),
        preprocessing=preprocessing,
        graphs=entries,
        tokenizer=_copy_in(Path(tokenizer), out, TOKENIZER_FILE),
        fusion=_fusion_semantics(config),
        heads={n: _copy_in(Path(p), out, f"heads/{_check_name(n, 'head')}.json") for n, p in heads.items()},
        libraries=library_versions(),
        git_revision=git_revision(),
    )


def _commit(out: Path, manifest: Manifest, archive: bool) -> None:
    """Write the manifest last (atomically), verify the result, then write the archive."""
    for sub in ("graphs", "heads", ""):
        _fsync_dir(out / sub)
    _write_manifest(out, manifest)
    try:
        verify_package(out)
    except PackageError:
        (out / MANIFEST_FILE).unlink(missing_ok=True)  # never leave a package that looks valid but is not
        raise
    if archive:
        write_archive(out)
    logger.info("built package %s (%s)", out, ", ".join(f"{n}:{g.selected}" for n, g in manifest.graphs.items()))


def _checked_graph_entries(
    config: ModelConfig,
    graphs: Mapping[str, Mapping[str, str | Path]],
    selected: Mapping[str, tuple[str, str]],
    other_files: Sequence[str | Path],
) -> dict[str, GraphEntry]:
    """Manifest entries (hashes still empty) after checking every source file exists and every interface."""
    sources = [Path(p) for p in other_files] + [Path(p) for g in graphs.values() for p in g.values()]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise MissingFileError(f"package input file(s) not found: {missing}; check the paths passed to the build")
    specs = graph_specs(config)
    entries = {}
    for name in GRAPH_NAMES:
        entries[name] = _graph_entry(specs[name], graphs[name], selected[name])
        for src in graphs[name].values():
            _check_graph_file(name, entries[name], Path(src), str(src))
    return entries


def _check_build_args(
    out: Path,
    config: ModelConfig,
    graphs: Mapping[str, Mapping[str, str | Path]],
    selected: Mapping[str, tuple[str, str]],
    preprocessing: Preprocessing,
    version: str,
) -> None:
    _check_name(out.name, "package (the output directory's name)")
    if not version.strip() or "\n" in version:
        raise PackageError(f"package version {version!r} is empty or multi-line; pass e.g. version='0.1.0'")
    valid = ", ".join(GRAPH_NAMES)
    for kind, given in (("graphs", graphs), ("selected", selected)):
        unknown = sorted(set(given) - set(GRAPH_NAMES))
        missing = [g for g in GRAPH_NAMES if g not in given]
        if unknown or missing:
            raise PackageError(f"{kind}: missing graph(s) {missing}, unknown graph(s) {unknown}; valid graphs: {valid}")
    for name in GRAPH_NAMES:
        bad = [p for p in graphs[name] if not _PRECISION_RE.match(p)]
        if bad or not graphs[name]:
            raise PackageError(f"graph {name!r}: precisions {bad or '(none)'} invalid; use lowercase names like fp32")
        choice = selected[name]
        if not (isinstance(choice, tuple | list) and len(choice) == 2 and choice[0] in graphs[name]):
            raise PackageError(
                f"selected[{name!r}] = {choice!r}; expected (precision, reason) with precision one of "
                f"{sorted(graphs[name])}"
            )
    _check_consistency(preprocessing, config)


def _graph_entry(spec: Any, files: Mapping[str, str | Path], choice: tuple[str, str]) -> GraphEntry:
    placeholder = {p: FileEntry(f"graphs/{spec.name}.{p}.onnx", "", 0) for p in sorted(files)}
    try:
        return GraphEntry(
            inputs=tuple(TensorInfo.from_spec(t) for t in spec.inputs),
            outputs=tuple(TensorInfo.from_spec(t) for t in spec.outputs),
            files=placeholder,
            selected=choice[0],
            reason=str(choice[1]),
            opset=spec.opset,
        )
    except ValueError as err:
        raise PackageError(f"graph {spec.name!r}: {err}") from err


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PackageError(f"output {str(out)!r} is a file; pass a directory path for the package")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise PackageError(
                f"output directory {str(out)!r} is not empty; choose a new directory or pass overwrite=True "
                "(`--overwrite`) to replace the package in it"
            )
        if not ((out / MANIFEST_FILE).exists() or (out / "graphs").is_dir()):
            raise PackageError(f"refusing to overwrite {str(out)!r}: it holds no package; choose a new directory")
        # The old manifest goes first: a rebuild killed from here on leaves nothing that looks valid.
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        archive_path(out).unlink(missing_ok=True)
        _fsync_dir(out)
        for sub in ("graphs", "heads"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / TOKENIZER_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _copy_in(src: Path, root: Path, rel: str) -> FileEntry:
    """Copy ``src`` to ``root/rel`` (fsynced), hashing the bytes on the way."""
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return FileEntry(rel, digest.hexdigest(), size)


def _write_manifest(root: Path, manifest: Manifest) -> None:
    data = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    _atomic_write_bytes(root / MANIFEST_FILE, data.encode("utf-8"))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a temp file: fsync, rename over it, fsync the folder; nothing half-written is left."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # missing directory, or a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fusion_semantics(cfg: ModelConfig) -> dict[str, Any]:
    return {"fused_layers": cfg.fusion.num_layers, "gate": GATE_SEMANTICS, "separate_cls": cfg.fusion.separate_cls}


def _check_name(name: str, what: str) -> str:
    if not _NAME_RE.match(name):
        raise PackageError(f"{what} name {name!r} is invalid; use letters, digits, '.', '_' and '-' only")
    return name


def _check_vocabs(vocabs: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    out = {}
    for name, words in vocabs.items():
        _check_name(name, "answer vocabulary")
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise PackageError(f"answer vocabulary {name!r} must be a list of strings")
        out[name] = tuple(words)
    return out


def _check_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for stage, values in metrics.items():
        out[str(stage)] = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise PackageError(f"metric {stage}/{key} = {value!r}; metrics must be finite numbers")
            out[str(stage)][str(key)] = float(value)
    return out


def _checkpoint_sha(source: str | Path | None) -> str | None:
    if source is None:
        return None
    if Path(source).is_file():
        return sha256_file(Path(source))[0]
    if isinstance(source, str) and _SHA_RE.match(source.lower()):
        return source.lower()
    raise PackageError(f"source_checkpoint {str(source)!r} is neither a file nor a sha256 hex digest")


def _check_consistency(pre: Preprocessing, cfg: ModelConfig) -> None:
    want = Preprocessing.from_config(cfg, pre.clip_seconds, pre.stride_seconds)
    diff = [
        f"{k}={getattr(pre, k)!r} (config: {getattr(want, k)!r})"
        for k in pre.to_dict()
        if getattr(pre, k) != getattr(want, k)
    ]
    if diff:
        raise ManifestError(
            f"preprocessing disagrees with the model config: {', '.join(diff)}; "
            f"make it with Preprocessing.from_config(config, ...) and {_REBUILD}"
        )


# ------------------------------------------------------------------------------------------- provenance
def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a package depends on, read from installed metadata.

    Torch is recorded when installed, without importing it.
    """
    out = {"python": platform.python_version()}
    for key, dists in _LIBRARIES.items():
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def git_revision() -> str | None:
    """The source tree's git commit (``-dirty`` with uncommitted changes), or None outside a git checkout."""
    return _git_revision(Path(__file__).resolve().parent)


def _now_iso() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds
    now = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return now.isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> tuple[str, int]:
    """The sha256 hex digest and size in bytes of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# ---------------------------------------------------------------------------------------------- archive
def archive_path(package_dir: str | Path) -> Path:
    """Where :func:`build_package` writes a package directory's archive: ``<dir>.egopkg`` beside it."""
    package_dir = Path(package_dir)
    return package_dir.with_name(package_dir.name + ARCHIVE_SUFFIX)


def write_archive(package_dir: str | Path, dest: str | Path | None = None) -> Path:
    """Write a package directory as one deterministic ``.egopkg`` tar, atomically.

    Members: ``<name>/manifest.json``, then every listed file in manifest order; owners, modes and times are
    fixed (time = the manifest's ``created``), so the same package always gives the same bytes.

    Args:
        package_dir: A package directory (it is not verified here).
        dest: Archive path; defaults to :func:`archive_path`.

    Returns:
        The archive path.
    """
    root = Path(package_dir)
    manifest = load_manifest(root)
    dest = Path(dest) if dest is not None else archive_path(root)
    mtime = int(datetime.fromisoformat(manifest.created).timestamp())
    with _atomic_file(dest) as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in [MANIFEST_FILE, *(e.file for e in manifest.files())]:
            info = tarfile.TarInfo(f"{manifest.name}/{rel}")
            info.size, info.mtime, info.mode = (root / rel).stat().st_size, mtime, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(root / rel, "rb") as f:
                tar.addfile(info, f)
    return dest


def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> str:
    """Reject unsafe members; returns the single top-level folder name."""
    seen, tops = set(), set()
    fix = "refusing to extract it; re-download/copy the archive from a trusted source"
    for m in members:
        if _unsafe_path(m.name):
            raise UnsafeArchiveError(f"archive {str(archive)!r} member {m.name!r} is absolute or has '..'; {fix}")
        if not (m.isreg() or m.isdir()):
            kind = "symlink" if m.issym() else "hard link" if m.islnk() else "special file"
            raise UnsafeArchiveError(f"archive {str(archive)!r} member {m.name!r} is a {kind}; {fix}")
        parts = [p for p in PurePosixPath(m.name).parts if p != "."]
        if len(parts) == 1 and not m.isdir():
            raise PackageError(f"archive {str(archive)!r} has file {m.name!r} outside a package folder; {_RECOPY}")
        key = "/".join(parts)
        if key in seen and not m.isdir():
            raise UnsafeArchiveError(f"archive {str(archive)!r} has member {m.name!r} twice; {fix}")
        seen.add(key)
        tops.add(parts[0])
    if len(tops) != 1:
        raise PackageError(
            f"archive {str(archive)!r} must hold exactly one top-level package folder, found {sorted(tops)}; {_RECOPY}"
        )
    return tops.pop()


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError) as err:
        raise PackageError(f"{str(archive)!r} is not a readable {ARCHIVE_SUFFIX} archive ({err}); {_RECOPY}") from err


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Safely extract an ``.egopkg`` into ``dest``; returns the package directory inside it.

    Every member is checked before anything is written: absolute paths, ``..``, links, special files and
    duplicates raise :class:`UnsafeArchiveError`.
    """
    archive, dest = Path(archive), Path(dest)
    with _open_tar(archive) as tar:
        try:
            members = tar.getmembers()
            top = _check_members(archive, members)
            for m in members:
                target = dest.joinpath(*[p for p in PurePosixPath(m.name).parts if p != "."])
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "xb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out, _CHUNK)
        except (tarfile.TarError, EOFError) as err:
            raise PackageError(f"archive {str(archive)!r} is truncated or corrupt ({err}); {_RECOPY}") from err
    return dest / top


def _archive_manifest_bytes(archive: Path) -> bytes:
    with _open_tar(archive) as tar:
        try:
            members = tar.getmembers()
            top = _check_members(archive, members)
            member = next(
                (m for m in members if m.name in (f"{top}/{MANIFEST_FILE}", f"./{top}/{MANIFEST_FILE}")), None
            )
            if member is None:
                raise MissingFileError(f"archive {str(archive)!r} has no {top}/{MANIFEST_FILE}; {_RECOPY}")
            return tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError) as err:
            raise PackageError(f"archive {str(archive)!r} is truncated or corrupt ({err}); {_RECOPY}") from err


# ----------------------------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_package` checked; it is only returned when every check passed.

    Attributes:
        path: The package directory or archive.
        name: Package name.
        version: Package version.
        schema_version: Manifest schema version.
        preset: Model preset.
        selected: Graph -> selected precision.
        files_checked: Files whose size and sha256 matched.
        bytes_checked: Their total size.
        interfaces: What read the graph interfaces: ``"onnx"``, ``"onnxruntime"`` or ``"skipped"``.
        tokenizer_vocab_size: Vocabulary size of the loaded tokenizer.
        seconds: Time the verification took.
    """

    path: str
    name: str
    version: str
    schema_version: int
    preset: str
    selected: dict[str, str]
    files_checked: int
    bytes_checked: int
    interfaces: str
    tokenizer_vocab_size: int
    seconds: float

    def summary(self) -> str:
        """A few human-readable lines."""
        graphs = ", ".join(f"{g}={p}" for g, p in self.selected.items())
        return (
            f"package {self.name} {self.version} (schema {self.schema_version}, preset {self.preset})\n"
            f"{self.files_checked} files, {self.bytes_checked / 2**20:.2f} MiB, sha256 OK\n"
            f"graph interfaces OK (read with {self.interfaces}); selected: {graphs}\n"
            f"tokenizer OK (vocab {self.tokenizer_vocab_size}); verified in {self.seconds:.2f} s"
        )


def load_manifest(path: str | Path) -> Manifest:
    """Read the manifest of a package directory or ``.egopkg`` archive (no file checks; see :func:`verify_package`).

    Raises:
        MissingFileError: There is no package or no ``manifest.json`` (e.g. a build that did not finish).
        SchemaVersionError: The schema version is unknown.
        ManifestError: The manifest is not valid JSON or lacks fields.
    """
    path = Path(path)
    if path.is_file():
        raw = _archive_manifest_bytes(path)
    elif (path / MANIFEST_FILE).is_file():
        raw = (path / MANIFEST_FILE).read_bytes()
    elif path.is_dir():
        raise MissingFileError(
            f"package {str(path)!r} has no {MANIFEST_FILE}: its build did not finish or the copy is incomplete; "
            f"{_RECOPY}"
        )
    else:
        raise MissingFileError(f"model package {str(path)!r} not found; pass a package directory or {ARCHIVE_SUFFIX}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{MANIFEST_FILE} of {str(path)!r} is not valid JSON ({err}); {_RECOPY}") from err
    return Manifest.from_dict(data)


def verify_package(path: str | Path, *, check_interfaces: bool = True) -> VerifyReport:
    """Check a package directory or ``.egopkg`` archive end to end.

    Checks, in order: the schema version; that every graph of :data:`~graphs.GRAPH_NAMES` is present with a
    selected precision and that the manifest agrees with the graph specs of its config; that every listed file
    exists; each file's size and sha256; each graph file's real ONNX inputs/outputs (names, element types, static
    dims, dynamic batch) against the manifest; that the tokenizer loads and fits the model's vocabulary.

    Args:
        path: A package directory or archive (extracted to a temporary directory and removed afterwards).
        check_interfaces: Read each graph's interface (needs ``onnx`` or ``onnxruntime``).

    Returns:
        What was checked.

    Raises:
        PackageError: The first problem found, as a typed subclass whose message names it and the fix.
    """
    path = Path(path)
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="egopkg-verify-") as tmp:
            report = _verify_dir(extract_archive(path, tmp), check_interfaces)
        return dataclasses.replace(report, path=str(path))
    return _verify_dir(path, check_interfaces)


def _verify_dir(root: Path, check_interfaces: bool) -> VerifyReport:
    start = time.perf_counter()
    manifest = load_manifest(root)
    cfg = _check_manifest(manifest)
    entries = manifest.files()
    missing = [e.file for e in entries if not (root / e.file).is_file()]
    if missing:
        raise MissingFileError(f"package {str(root)!r} is missing {', '.join(missing)}; {_RECOPY}")
    for e in entries:
        digest, size = sha256_file(root / e.file)
        if digest != e.sha256 or size != e.size:
            raise ChecksumError(
                f"{e.file} is corrupt in package {str(root)!r}: sha256 expected {e.sha256}, actual {digest} "
                f"(size expected {e.size}, actual {size}); {_RECOPY}"
            )
    interfaces = "skipped"
    if check_interfaces:
        for name, graph in manifest.graphs.items():
            for f in graph.files.values():
                interfaces = _check_graph_file(name, graph, root / f.file, f.file)
    vocab_size = _check_tokenizer(root / manifest.tokenizer.file, manifest.preprocessing.text_max_length, cfg)
    return VerifyReport(
        path=str(root),
        name=manifest.name,
        version=manifest.version,
        schema_version=manifest.schema_version,
        preset=manifest.preset,
        selected={n: g.selected for n, g in manifest.graphs.items()},
        files_checked=len(entries),
        bytes_checked=sum(e.size for e in entries),
        interfaces=interfaces,
        tokenizer_vocab_size=vocab_size,
        seconds=time.perf_counter() - start,
    )


def _check_manifest(manifest: Manifest) -> ModelConfig:
    """Every graph present and selected; the manifest agrees with the specs and preprocessing of its config."""
    missing = [g for g in GRAPH_NAMES if g not in manifest.graphs]
    unknown = sorted(set(manifest.graphs) - set(GRAPH_NAMES))
    if missing or unknown:
        raise ManifestError(
            f"package graphs: missing {missing}, unknown {unknown}; a package needs exactly "
            f"{', '.join(GRAPH_NAMES)}; {_REBUILD}"
        )
    try:
        cfg = manifest.model_config()
    except ValueError as err:
        raise ManifestError(f"manifest config is invalid ({err}); {_REBUILD}") from err
    _check_consistency(manifest.preprocessing, cfg)
    for name, spec in graph_specs(cfg).items():
        entry = manifest.graphs[name]
        for kind, want, have in (("inputs", spec.inputs, entry.inputs), ("outputs", spec.outputs, entry.outputs)):
            expected = tuple(TensorInfo.from_spec(t) for t in want)
            if have != expected:
                raise GraphMismatchError(
                    f"graph {name!r}: the manifest's {kind} {[t.to_dict() for t in have]} differ from this "
                    f"egovlpv2-edge's spec {[t.to_dict() for t in expected]}; {_REBUILD} of this version"
                )
    return cfg


def _check_tokenizer(path: Path, max_length: int, cfg: ModelConfig) -> int:
    from egovlpv2_edge.tokenizer import Tokenizer

    try:
        tok = Tokenizer.from_file(path, max_length=max_length)
    except (ValueError, OSError) as err:
        raise PackageError(
            f"tokenizer {str(path)!r} does not load ({err}); {_REBUILD} with a valid tokenizer.json"
        ) from err
    if tok.vocab_size > cfg.text.vocab_size:
        raise PackageError(
            f"tokenizer vocab size {tok.vocab_size} exceeds the model's text.vocab_size {cfg.text.vocab_size}: "
            f"its ids would index past the embedding; {_REBUILD} with the model's own tokenizer"
        )
    return tok.vocab_size


# -------------------------------------------------------------------------------------- graph interfaces
_Actual = dict[str, tuple[str, tuple[int | str, ...] | None]]  # name -> (dtype, shape or None when undeclared)


def _check_graph_file(graph: str, entry: GraphEntry, path: Path, label: str) -> str:
    """Compare a graph file's real inputs/outputs with ``entry``; returns the reader used."""
    read = _read_interface(path, f"graph {graph!r} ({label})")
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


def _read_interface(path: Path, label: str) -> tuple[_Actual, _Actual, str] | None:
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


# ------------------------------------------------------------------------------------------------- open
class ModelPackage:
    """A verified package, ready for the runtime: the manifest, selected graph files and tokenizer.

    Build one with :func:`open_package`. Use it as a context manager (or call :meth:`close`) when it was
    extracted to a temporary directory, so the directory is removed.

    Attributes:
        root: The package directory.
        manifest: Its manifest.
        report: The verification that passed when it was opened.
    """

    def __init__(self, root: Path, manifest: Manifest, report: VerifyReport, temp_dir: Path | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.report = report
        self._cleanup = weakref.finalize(self, shutil.rmtree, temp_dir, True) if temp_dir else None

    @property
    def config(self) -> ModelConfig:
        """The model config."""
        return self.manifest.model_config()

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing the graphs expect."""
        return self.manifest.preprocessing

    @property
    def graph_paths(self) -> dict[str, Path]:
        """Graph name -> file of its selected precision."""
        return {name: self.root / e.file for name, e in self.manifest.selected().items()}

    def graph_path(self, graph: str, precision: str | None = None) -> Path:
        """The file of one graph, in its selected precision unless ``precision`` is given.

        Raises:
            ValueError: Unknown graph or precision; the message lists the valid ones.
        """
        if graph not in self.manifest.graphs:
            raise ValueError(f"unknown graph {graph!r}; valid graphs: {', '.join(self.manifest.graphs)}")
        entry = self.manifest.graphs[graph]
        precision = entry.selected if precision is None else precision
        if precision not in entry.files:
            raise ValueError(f"graph {graph!r} has no precision {precision!r}; valid: {', '.join(entry.files)}")
        return self.root / entry.files[precision].file

    def tokenizer(self) -> Tokenizer:
        """Load the package's tokenizer, padding/truncating to ``preprocessing.text_max_length``."""
        from egovlpv2_edge.tokenizer import Tokenizer

        return Tokenizer.from_file(self.root / self.manifest.tokenizer.file, self.preprocessing.text_max_length)

    def answer_vocab(self, name: str) -> list[str]:
        """An answer vocabulary by head name (index = class id).

        Raises:
            ValueError: Unknown name; the message lists the valid ones.
        """
        if name not in self.manifest.answer_vocabs:
            raise ValueError(
                f"no answer vocabulary {name!r}; valid: {', '.join(self.manifest.answer_vocabs) or '(none)'}"
            )
        return list(self.manifest.answer_vocabs[name])

    def close(self) -> None:
        """Remove the temporary extraction directory, if any."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> ModelPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelPackage({self.manifest.name!r} {self.manifest.version}, root={str(self.root)!r})"


def open_package(path: str | Path, *, cache_dir: str | Path | None = None) -> ModelPackage:
    """Open and verify a package directory or ``.egopkg`` archive.

    An archive is extracted once to ``<cache_dir or its folder>/<archive name>.d/`` and reused while the archive's
    manifest is unchanged (a temporary directory is used when that folder is not writable). Everything is verified
    (:func:`verify_package`) before the package is returned, cache hits included.

    Args:
        path: Package directory or archive.
        cache_dir: Folder for the extraction cache of an archive.

    Returns:
        The verified package.

    Raises:
        PackageError: The package is missing, unsafe, incomplete or corrupt.
    """
    path = Path(path)
    if path.is_dir():
        return ModelPackage(path, load_manifest(path), verify_package(path))
    if not path.is_file():
        raise MissingFileError(f"model package {str(path)!r} not found; pass a package directory or {ARCHIVE_SUFFIX}")
    stamp = hashlib.sha256(_archive_manifest_bytes(path)).hexdigest()
    base = Path(cache_dir) if cache_dir is not None else path.parent
    cache = base / f"{path.name}.d"
    try:
        root = _cached_root(cache, stamp)
        if root is not None:
            try:
                return ModelPackage(root, load_manifest(root), verify_package(root))
            except PackageError as err:
                logger.warning("extraction cache %s is damaged (%s); extracting again", cache, err)
        root = _extract_to_cache(path, cache, stamp)
        temp = None
    except OSError as err:  # read-only or unwritable folder: extract to a private temporary directory
        temp = Path(tempfile.mkdtemp(prefix="egopkg-"))
        logger.info("cannot extract into %s (%s); extracting to %s", cache, err, temp)
        root = extract_archive(path, temp)
    try:
        return ModelPackage(root, load_manifest(root), verify_package(root), temp_dir=temp)
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise


_STAMP_FILE = "source.json"


def _cached_root(cache: Path, stamp: str) -> Path | None:
    try:
        data = json.loads((cache / _STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    root = cache / str(data.get("root", ""))
    return root if data.get("manifest_sha256") == stamp and root.parent == cache and root.is_dir() else None


def _extract_to_cache(archive: Path, cache: Path, stamp: str) -> Path:
    """Extract into a staging folder beside ``cache``, then swap it in with renames."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        root = extract_archive(archive, staging)
        stamp_data = json.dumps({"manifest_sha256": stamp, "root": root.name, "archive": archive.name})
        (staging / _STAMP_FILE).write_text(stamp_data + "\n")
        if cache.exists():
            old = cache.with_name(f".{cache.name}.old-{os.getpid()}")
            os.replace(cache, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(staging, cache)
        except OSError:  # another process put its extraction there first: use it if it is this archive's
            if _cached_root(cache, stamp) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache / root.name

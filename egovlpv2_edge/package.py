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

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egovlpv2_edge._archive import (
    ARCHIVE_SUFFIX,
    CHUNK,
    MANIFEST_FILE,
    archive_manifest_bytes,
    atomic_file,
    cached_root,
    extract_archive,
    extract_to_cache,
    fsync_dir,
    write_tar,
)
from egovlpv2_edge._interfaces import check_graph_file
from egovlpv2_edge._manifest import PRECISION_RE as _PRECISION_RE
from egovlpv2_edge._manifest import (
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    FileEntry,
    GraphEntry,
    Manifest,
    PrecisionCandidate,
    Preprocessing,
    TensorInfo,
)
from egovlpv2_edge._package_errors import REBUILD as _REBUILD
from egovlpv2_edge._package_errors import RECOPY as _RECOPY
from egovlpv2_edge._package_errors import (
    AnswerVocabError,
    ChecksumError,
    GraphMismatchError,
    ManifestError,
    MissingFileError,
    PackageError,
    SchemaVersionError,
    UnsafeArchiveError,
)
from egovlpv2_edge._package_qa import (
    DUAL_QA_HEAD,
    DualQAHead,
    check_qa_vocab,
    qa_answers_in_files,
    read_dual_qa_head,
)
from egovlpv2_edge.config import ModelConfig
from egovlpv2_edge.graphs import GRAPH_NAMES, QA_VOCAB, GraphSpec, graph_specs
from egovlpv2_edge.runconfig import git_revision as _git_revision

if TYPE_CHECKING:
    from egovlpv2_edge.tokenizer import Tokenizer

__all__ = [
    "ARCHIVE_SUFFIX",
    "GATE_SEMANTICS",
    "AnswerVocabError",
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "TOKENIZER_FILE",
    "ChecksumError",
    "FileEntry",
    "GraphEntry",
    "GraphMismatchError",
    "Manifest",
    "ManifestError",
    "MissingFileError",
    "ModelPackage",
    "PackageError",
    "PrecisionCandidate",
    "Preprocessing",
    "SchemaVersionError",
    "TensorInfo",
    "UnsafeArchiveError",
    "VerifyReport",
    "archive_path",
    "build_package",
    "extract_archive",
    "git_revision",
    "library_versions",
    "load_manifest",
    "open_package",
    "sha256_file",
    "verify_package",
    "write_archive",
]

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
GATE_SEMANTICS = "one scalar per fused layer and side, added without tanh; 0 = unimodal (dual), else fused"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_LIBRARIES = {
    "egovlpv2-edge": ("egovlpv2-edge",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tokenizers": ("tokenizers",),
    "torch": ("torch",),
}


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
    providers: Mapping[str, str | Path] | None = None,
    candidates: Mapping[str, Sequence[PrecisionCandidate]] | None = None,
    measured_on: str = "",
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
        answer_vocabs: Head name -> answer strings, stored in the manifest. A fused graph with a QA head
            (``qa_logits``) needs ``"qa"`` with one string per answer.
        heads: Name -> extra JSON file, stored as ``heads/<name>.json``.
        providers: Name -> execution-provider settings JSON, stored as ``providers/<name>.json`` (e.g. the
            ``tensorrt`` file of ``egovlp compress trt``).
        candidates: Graph -> the precisions measured when its precision was chosen (``egovlp compress quantize``);
            the selected precision must be among them. Graphs left out record none.
        measured_on: Where the candidates were measured (runtime, provider, threads, CPU).
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
    extra = [tokenizer, *(heads or {}).values(), *(providers or {}).values()]
    entries, qa_answers = _checked_graph_entries(config, graphs, selected, extra, candidates or {}, measured_on)
    _check_tokenizer(Path(tokenizer), preprocessing.text_max_length, config)
    vocabs, sha, checked = (
        _check_vocabs(answer_vocabs or {}),
        _checkpoint_sha(source_checkpoint),
        _check_metrics(metrics or {}),
    )
    check_qa_vocab(qa_answers, vocabs)
    if DUAL_QA_HEAD in (heads or {}):
        _dual_qa_head(Path((heads or {})[DUAL_QA_HEAD]), config, vocabs)
    _prepare_out_dir(out, overwrite)
    manifest = _copy_files(out, config, preprocessing, entries, graphs, tokenizer, heads or {}, version)
    manifest = dataclasses.replace(
        manifest,
        providers={
            n: _copy_in(Path(p), out, f"providers/{_check_name(n, 'provider')}.json")
            for n, p in (providers or {}).items()
        },
    )
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
    for sub in ("graphs", "heads", "providers", ""):
        fsync_dir(out / sub)
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
    candidates: Mapping[str, Sequence[PrecisionCandidate]],
    measured_on: str,
) -> tuple[dict[str, GraphEntry], int | None]:
    """Manifest entries (hashes still empty) after checking every source file exists and every interface, and the
    answer count of the fused graph's QA head (None without one)."""
    sources = [Path(p) for p in other_files] + [Path(p) for g in graphs.values() for p in g.values()]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise MissingFileError(f"package input file(s) not found: {missing}; check the paths passed to the build")
    qa_answers = qa_answers_in_files(graphs["fused_upper"].values())
    specs = graph_specs(config, qa_answers)
    entries = {}
    for name in GRAPH_NAMES:
        entries[name] = _graph_entry(specs[name], graphs[name], selected[name], candidates.get(name, ()), measured_on)
        for src in graphs[name].values():
            check_graph_file(name, entries[name], Path(src), str(src))
    return entries, qa_answers


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


def _graph_entry(
    spec: Any,
    files: Mapping[str, str | Path],
    choice: tuple[str, str],
    candidates: Sequence[PrecisionCandidate],
    measured_on: str,
) -> GraphEntry:
    placeholder = {p: FileEntry(f"graphs/{spec.name}.{p}.onnx", "", 0) for p in sorted(files)}
    try:
        return GraphEntry(
            inputs=tuple(TensorInfo.from_spec(t) for t in spec.inputs),
            outputs=tuple(TensorInfo.from_spec(t) for t in spec.outputs),
            files=placeholder,
            selected=choice[0],
            reason=str(choice[1]),
            opset=spec.opset,
            candidates=tuple(candidates),
            measured_on=measured_on if candidates else "",
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
        fsync_dir(out)
        for sub in ("graphs", "heads", "providers"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / TOKENIZER_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _copy_in(src: Path, root: Path, rel: str) -> FileEntry:
    """Copy ``src`` to ``root/rel`` (fsynced), hashing the bytes on the way."""
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
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
    with atomic_file(path) as f:
        f.write(data)


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
        while chunk := f.read(CHUNK):
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
    write_tar(root, manifest.name, [MANIFEST_FILE, *(e.file for e in manifest.files())], mtime, dest)
    return dest


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
        raw = archive_manifest_bytes(path)
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
    selected precision and that the manifest agrees with the graph specs of its config (with the QA head when the
    fused graph has ``qa_logits``, whose answer count must match the ``"qa"`` answer vocabulary); that every listed
    file exists; each file's size and sha256; each graph file's real ONNX inputs/outputs (names, element types,
    static dims, dynamic batch) against the manifest; that the tokenizer loads and fits the model's vocabulary.

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
                interfaces = check_graph_file(name, graph, root / f.file, f.file)
    if DUAL_QA_HEAD in manifest.heads:
        _dual_qa_head(root / manifest.heads[DUAL_QA_HEAD].file, cfg, manifest.answer_vocabs)
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
    qa_answers = manifest.qa_answers()
    check_qa_vocab(qa_answers, manifest.answer_vocabs)
    for name, spec in graph_specs(cfg, qa_answers).items():
        entry = manifest.graphs[name]
        for kind, want, have in (("inputs", spec.inputs, entry.inputs), ("outputs", spec.outputs, entry.outputs)):
            expected = tuple(TensorInfo.from_spec(t) for t in want)
            if have != expected:
                raise GraphMismatchError(
                    f"graph {name!r}: the manifest's {kind} {[t.to_dict() for t in have]} differ from this "
                    f"egovlpv2-edge's spec {[t.to_dict() for t in expected]}; {_REBUILD} of this version"
                )
    return cfg


def _dual_qa_head(path: Path, cfg: ModelConfig, vocabs: Mapping[str, Sequence[str]]) -> DualQAHead:
    """Read the gates-off QA head file, checked against the embedding width and the ``"qa"`` vocabulary."""
    return read_dual_qa_head(path, cfg.heads.embed_dim, len(vocabs[QA_VOCAB]) if QA_VOCAB in vocabs else None)


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
    def specs(self) -> dict[str, GraphSpec]:
        """The graph specs of this package: its config's, with ``qa_logits`` when the fused graph has a QA head."""
        return graph_specs(self.config, self.manifest.qa_answers())

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

    def provider_settings(self, name: str) -> dict[str, Any]:
        """The parsed execution-provider settings file ``providers/<name>.json`` (e.g. ``"tensorrt"``).

        Raises:
            ValueError: Unknown name; the message lists the valid ones.
        """
        if name not in self.manifest.providers:
            raise ValueError(
                f"no provider settings {name!r}; valid: {', '.join(self.manifest.providers) or '(none)'}; "
                "add them with `egovlp compress trt`"
            )
        return json.loads((self.root / self.manifest.providers[name].file).read_text())

    def provider_options(self, name: str, graph: str, cache_dir: str | Path) -> tuple[str, dict[str, str]]:
        """One graph's execution provider and its options, ready for ``ort.InferenceSession(providers=...)``.

        ``{cache_dir}`` in option values (engine and timing caches) becomes ``cache_dir``: the package itself may
        be read-only, the caches must be writable and persist between runs on the device.

        Args:
            name: Settings name, e.g. ``"tensorrt"``.
            graph: Graph name.
            cache_dir: Writable folder for engine and timing caches.

        Returns:
            ``(provider name, {option: value as str})``.

        Raises:
            ValueError: Unknown settings name or graph; the message lists the valid ones.
        """
        settings = self.provider_settings(name)
        graphs = settings.get("graphs", {})
        if graph not in graphs:
            raise ValueError(f"provider settings {name!r} have no graph {graph!r}; valid: {', '.join(graphs)}")
        cache = str(Path(cache_dir))
        options = {k: str(v).replace("{cache_dir}", cache) for k, v in graphs[graph]["options"].items()}
        return str(settings["provider"]), options

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

    def dual_qa_head(self) -> DualQAHead | None:
        """The gates-off QA head (``heads/qa_dual.json``: answers from the dual embeddings alone), or None."""
        if DUAL_QA_HEAD not in self.manifest.heads:
            return None
        file = self.root / self.manifest.heads[DUAL_QA_HEAD].file
        return _dual_qa_head(file, self.config, self.manifest.answer_vocabs)

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
    stamp = hashlib.sha256(archive_manifest_bytes(path)).hexdigest()
    base = Path(cache_dir) if cache_dir is not None else path.parent
    cache = base / f"{path.name}.d"
    try:
        root = cached_root(cache, stamp)
        if root is not None:
            try:
                return ModelPackage(root, load_manifest(root), verify_package(root))
            except PackageError as err:
                logger.warning("extraction cache %s is damaged (%s); extracting again", cache, err)
        root = extract_to_cache(path, cache, stamp)
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

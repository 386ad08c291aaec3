"""Typed errors of the model package (:mod:`egovlpv2_edge.package` re-exports them)."""

from __future__ import annotations

REBUILD = "rebuild the package with `egovlp package build`"
RECOPY = "re-download/copy the package (or rebuild it with `egovlp package build`)"


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


class AnswerVocabError(PackageError):
    """A graph's QA head and the package's ``"qa"`` answer vocabulary disagree (missing, or another size)."""


class UnsafeArchiveError(PackageError):
    """An ``.egopkg`` member would escape the extraction folder or is not a regular file."""

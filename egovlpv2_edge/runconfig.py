"""Run configs: a dataclass schema, an optional override file and ``key=value`` overrides (dinov2 style).

``resolve(TrainConfig, "ovr.json", ["lr=1e-4", "model.video.depth=4"])`` starts from the dataclass defaults,
merges the file (only the keys it sets) and then the command-line pairs; values parse as JSON when they can
(``1e-4``, ``true``, ``[1, 2]``, ``{"a": 1}``) and stay strings otherwise. Unknown keys are errors that list the
valid ones. The resolved config is saved beside every run with the git revision (:func:`save_resolved`).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any, TypeVar

from egovlpv2_edge.config import merge

T = TypeVar("T")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not key=value (e.g. lr=1e-4 or model.video.depth=4)")
        key, raw = pair.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _build(cls: type[T], data: dict[str, Any], path: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {path or 'config'}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        nested = _dataclass_type(cls, key)
        if nested is not None and isinstance(value, dict):
            value = _build(nested, value, f"{path}.{key}" if path else key)
        elif isinstance(value, list) and "tuple" in str(fields[key].type):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _dataclass_type(cls: type, name: str) -> type | None:
    default = cls()  # type: ignore[call-arg]
    value = getattr(default, name)
    return type(value) if dataclasses.is_dataclass(value) else None


def resolve(cls: type[T], file: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, then ``file`` (JSON; a list merges each in turn), then ``key=value`` overrides.

    Args:
        cls: A dataclass whose fields all have defaults (nested dataclasses allowed).
        file: Optional JSON file with the keys to change, or several, later ones winning.
        overrides: ``key=value`` strings, dotted keys for nested fields.

    Returns:
        The resolved instance.
    """
    data = dataclasses.asdict(cls())  # type: ignore[call-overload]
    files = file if isinstance(file, list) else [] if file is None else [file]
    for item in files:
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = merge(data, json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path} is not valid JSON ({exc}); fix it or leave it out") from exc
    data = merge(data, parse_overrides(overrides or []))
    return _build(cls, data, "")


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with ``-dirty`` when the tree has changes), or None outside a repository."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def save_resolved(config: Any, out_dir: str | Path, name: str = "config.json") -> Path:
    """Write the resolved config and the git revision to ``out_dir/name``."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": dataclasses.asdict(config), "git_revision": git_revision(Path(__file__).parent)}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path

"""Saving results: a folder with ``tensors.safetensors`` and ``manifest.json``.

The manifest records what produced the result (kind, format version, library and
TransformerLens versions, model, parameters) and the SHA-256 of the tensor file,
which :func:`read_result` checks. Writes are atomic: the folder is built beside
the target and renamed into place, so a failed save leaves nothing half-written
and never damages a previous save.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import SaveError

__all__ = ["write_result", "read_result", "library_versions", "write_text", "sha256_file"]

TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    return {
        "tl_multilingual": _version("tl-multilingual"),
        "transformer_lens": _version("transformer-lens"),
        "torch": torch.__version__,
    }


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_previous_save(path: Path) -> bool:
    return path.is_dir() and set(os.listdir(path)) <= {TENSORS, MANIFEST}


def write_result(
    path: str | Path, *, kind: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]
) -> Path:
    """Write ``tensors`` and ``manifest`` into the folder ``path``, atomically.

    An existing folder is replaced only if it holds a previous save (nothing but a
    manifest and a tensor file); anything else is refused.
    """
    target = Path(path)
    if target.exists() and not _is_previous_save(target):
        raise SaveError(f"{target} exists and is not a saved result; choose another path")
    created: list[Path] = []
    parent = target.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    moved_old = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(staging / TENSORS))
        full = {
            "kind": kind,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
            **manifest,
            "files": {TENSORS: sha256_file(staging / TENSORS)},
        }
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
        if target.exists():
            target.rename(backup)
            moved_old = True
        staging.rename(target)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if moved_old and not target.exists():
            backup.rename(target)
        for folder in created:
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(err, (OSError, TypeError, ValueError)):
            raise SaveError(f"could not save to {target}: {err}") from err
        raise
    if moved_old:
        shutil.rmtree(backup, ignore_errors=True)
    return target


def read_result(path: str | Path, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by :func:`write_result`, checking its kind and checksum."""
    folder = Path(path)
    manifest_path, tensor_path = folder / MANIFEST, folder / TENSORS
    if not manifest_path.is_file() or not tensor_path.is_file():
        raise SaveError(f"{folder} is not a saved result (expected {MANIFEST} and {TENSORS})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaveError(f"{manifest_path} is corrupt: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        found = manifest.get("kind") if isinstance(manifest, dict) else None
        raise SaveError(f"{folder} holds a {found!r}, not a {kind!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SaveError(
            f"{folder} was written by a newer tl_multilingual (format "
            f"{manifest['format_version']}); upgrade to read it"
        )
    expected = manifest.get("files", {}).get(TENSORS)
    if expected != sha256_file(tensor_path):
        raise SaveError(f"{tensor_path} does not match its manifest checksum: the file is corrupt")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as err:
        raise SaveError(f"{tensor_path} is corrupt: {err}") from None
    return tensors, manifest


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically: a temporary sibling, then a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, target)
    except OSError as err:
        staging.unlink(missing_ok=True)
        raise SaveError(f"could not write {target}: {err}") from err
    return target

"""Saving results: a folder with ``tensors.safetensors`` and ``manifest.json``; atomic
writes of every file the library produces.

The manifest records what produced the result (kind, format version, library and
TransformerLens versions, model, parameters), the SHA-256 of the tensor file and a
checksum of the manifest itself, so neither the tensors nor what gives them their
meaning (languages and their order, model, shape, settings) can be damaged or edited
by accident unnoticed: [`read_result()`][tl_multilingual.persist.read_result] checks
both, whatever the manifest says about its own format. The checksums have no key: they
do not stop a deliberate edit whose author recomputes them.

Every write is atomic. A file is written beside its target and renamed into place
([`atomic_file()`][tl_multilingual.persist.atomic_file]); a folder is built beside its target and swapped in
([`atomic_folder()`][tl_multilingual.persist.atomic_folder]). Temporary siblings are named ``.<target>.tmp-<pid>-<id>``
(and ``.<target>.old-<pid>-<id>`` for the previous version during the swap). A
process killed mid-save leaves them behind; the next save or load of the same target
([`recover()`][tl_multilingual.persist.recover]) puts the newest complete version in place if the kill hid it
between the two renames, and removes what dead processes left.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import SaveError, TLMultilingualError

__all__ = [
    "write_result", "read_result", "library_versions", "write_text", "sha256_file", "atomic_file",
    "atomic_folder", "recover", "is_temporary", "manifest_field", "read_torch_file",
    "write_tables", "read_tables", "read_json", "loads_json", "MAX_JSON_DEPTH",
]

TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: the manifest carries a checksum of its own content
MAX_JSON_DEPTH = 100  # the deepest nesting of arrays and objects a JSON file may have
_STAGING, _BACKUP = "tmp", "old"
# Failures of the file system or of the serialisers that a save or a load can meet.
_IO_ERRORS = (OSError, SafetensorError, TypeError, ValueError)


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


# -- temporary siblings and recovery -----------------------------------------------------


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary sibling left by a save (of any target)."""
    name = path.name
    if not name.startswith("."):
        return False
    for tag in (_STAGING, _BACKUP):
        stem, sep, _ = name.rpartition(f".{tag}-")
        if sep and len(stem) > 1:
            return True
    return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _leftovers(target: Path) -> list[tuple[Path, str]]:
    """Temporary siblings of ``target`` whose writing process is gone."""
    prefix = f".{target.name}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        tag, _, ident = entry.name[len(prefix) :].partition("-")
        if tag not in (_STAGING, _BACKUP):
            continue
        pid = ident.split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue  # a save in progress
        found.append((entry, tag))
    return found


def _complete_mtime(folder: Path) -> int | None:
    """The manifest's modification time if ``folder`` is a complete, intact result."""
    try:
        _verify(folder)
        return (folder / MANIFEST).stat().st_mtime_ns
    except (SaveError, OSError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(path: str | Path) -> Path | None:
    """Finish or undo what interrupted saves of ``path`` left behind.

    If ``path`` is missing because a save was killed between moving the previous
    version aside and moving the new one in, the newest complete version (the new one
    if it was complete, else the previous one) is put back in place. Then every
    temporary sibling left by a dead process is removed. Returns the recovered folder,
    or None. Best effort: errors of the file system are ignored here and surface when
    the target is used.
    """
    target = Path(path)
    leftovers = _leftovers(target)
    restored = None
    if leftovers and not target.exists():
        candidates = [(mtime, entry) for entry, _ in leftovers if entry.is_dir()
                      if (mtime := _complete_mtime(entry)) is not None]
        if candidates:
            newest = max(candidates)[1]
            try:
                newest.rename(target)
                restored = target
            except OSError:
                return None
    for entry, _ in leftovers:
        if entry.exists():
            try:
                _remove(entry)
            except OSError:
                pass
    return restored


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _translate(err: BaseException, target: Path, what: str = "save to") -> BaseException:
    if isinstance(err, TLMultilingualError):
        return err
    if isinstance(err, _IO_ERRORS):
        return SaveError(f"could not {what} {target}: {err}")
    return err


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Write one file atomically: yields a temporary sibling to write, which replaces
    ``path`` when the block ends without error (and is removed otherwise).

    Raises:
        SaveError: the file could not be written (the cause is chained).
    """
    target = Path(path)
    recover(target)
    staging = _sibling(target, _STAGING)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield staging
        _fsync(staging)
        os.replace(staging, target)
    except BaseException as err:
        staging.unlink(missing_ok=True)
        translated = _translate(err, target, "write")
        if translated is err:
            raise
        raise translated from err


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_file(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_folder(path: str | Path, *, replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Build a folder atomically: yields an empty staging folder beside ``path``,
    swapped into place when the block ends without error.

    An existing ``path`` is replaced only if ``replaceable(path)`` (default: never
    refused). Folders created for the parent path are removed again on failure.

    Raises:
        SaveError: ``path`` exists and may not be replaced, or writing failed (the
            cause is chained); a previous version stays intact.
    """
    target = Path(path)
    recover(target)
    if target.exists() and replaceable is not None and not replaceable(target):
        raise SaveError(f"{target} exists and is not a saved result; choose another path")
    created: list[Path] = []
    parent = target.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    staging, backup = _sibling(target, _STAGING), _sibling(target, _BACKUP)
    moved_old = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        yield staging
        for entry in staging.iterdir():
            _fsync(entry)
        if target.exists():
            target.rename(backup)
            moved_old = True
        staging.rename(target)
        _fsync(target.parent)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if moved_old and not target.exists():
            backup.rename(target)
        for folder in created:
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        translated = _translate(err, target)
        if translated is err:
            raise
        raise translated from err
    if moved_old:
        shutil.rmtree(backup, ignore_errors=True)


# -- JSON --------------------------------------------------------------------------------


def _depth(value: Any) -> int:
    """The nesting depth of decoded JSON (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads_json(
    text: str | bytes, *, what: str | Path, error: type[TLMultilingualError] = SaveError,
    lines: bool = False,
) -> Any:
    """Decode JSON text (``lines=True``: JSON Lines, one value per non-empty line, as a list).

    Every decoding failure becomes ``error``: invalid JSON or UTF-8, and nesting deeper
    than `MAX_JSON_DEPTH` levels (which Python's decoder
    would otherwise meet as a `RecursionError`).

    Args:
        text: the JSON text.
        what: the file (or a description of the text) named in the message.
        error: the exception class raised.
        lines: read JSON Lines.

    Raises:
        error: the text is not valid JSON (the line is named for JSON Lines), or nests
            deeper than the library reads; the decoder's exception is chained.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if lines:
            values = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    values.append(_checked_json(line))
                except (ValueError, RecursionError) as err:
                    raise error(f"{what}: line {number} {_failure(err)}") from err
            return values
        return _checked_json(text)
    except TLMultilingualError:
        raise
    except (ValueError, RecursionError) as err:  # ValueError: JSON and UTF-8 decoding
        raise error(f"{what} {_failure(err)}") from err


class _TooDeep(ValueError):
    """Decoded JSON nesting deeper than ``MAX_JSON_DEPTH``."""


_TOO_DEEP = f"it nests arrays or objects deeper than the {MAX_JSON_DEPTH} levels the library reads"


def _reason(err: BaseException) -> str:
    return _TOO_DEEP if isinstance(err, (RecursionError, _TooDeep)) else str(err)


def _failure(err: BaseException) -> str:
    """What went wrong, after the file's name: invalid JSON, or valid JSON nested deeper
    than the library reads."""
    if isinstance(err, (RecursionError, _TooDeep)):
        return f"cannot be read: {_TOO_DEEP}"
    return f"is not valid JSON: {err}"


def _checked_json(text: str) -> Any:
    value = json.loads(text)
    if _depth(value) > MAX_JSON_DEPTH:
        raise _TooDeep(_TOO_DEEP)
    return value


def read_json(
    path: str | Path, *, error: type[TLMultilingualError] = SaveError, lines: bool = False,
    what: str | None = None,
) -> Any:
    """Read a JSON (or, ``lines=True``, JSON Lines) file: the one reader of every JSON
    file the library takes (manifests, corpora, items, word lists, saved records).

    Args:
        path: the file.
        error: the exception class raised.
        lines: read JSON Lines (a list of the lines' values).
        what: how the file is named in messages (default: its path).

    Raises:
        error: the file is missing or unreadable, not UTF-8, not valid JSON, or nests
            deeper than `MAX_JSON_DEPTH` levels (see
            [`loads_json()`][tl_multilingual.persist.loads_json]); the cause is chained.
    """
    name = what or str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise error(f"cannot read {name}: {err.strerror or err}") from err
    return loads_json(raw, what=name, error=error, lines=lines)


# -- results: tensors + manifest ---------------------------------------------------------


def _is_previous_save(path: Path) -> bool:
    return path.is_dir() and set(os.listdir(path)) <= {TENSORS, MANIFEST}


def _digest(manifest: Mapping[str, Any]) -> str:
    """Checksum of a manifest's content (everything but the checksum itself)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_result(
    path: str | Path, *, kind: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]
) -> Path:
    """Write ``tensors`` and ``manifest`` into the folder ``path``, atomically.

    An existing folder is replaced only if it holds a previous save (nothing but a
    manifest and a tensor file); anything else is refused.

    Raises:
        SaveError: the folder is foreign, or writing failed (disk full, permissions,
            tensors that cannot be serialised); the previous save stays intact.
    """
    target = Path(path)
    with atomic_folder(target, replaceable=_is_previous_save) as staging:
        for name, value in tensors.items():
            if value.is_meta:
                raise SaveError(f"cannot save {name}: it is on the meta device and holds no values")
        contiguous, seen = {}, set()
        for name, value in tensors.items():
            value = value.detach().cpu().contiguous()
            if value.numel() and value.untyped_storage().data_ptr() in seen:  # safetensors refuses shared memory
                value = value.clone()
            seen.add(value.untyped_storage().data_ptr())
            contiguous[name] = value
        save_file(contiguous, str(staging / TENSORS))
        full = {
            "kind": kind,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
            **manifest,
            "files": {TENSORS: sha256_file(staging / TENSORS)},
        }
        full = json.loads(json.dumps(full, default=str))  # what a reader will see
        full["checksum"] = _digest(full)
        (staging / MANIFEST).write_text(json.dumps(full, indent=2), encoding="utf-8")
    return target


def _verify(folder: Path) -> dict[str, Any]:
    """The manifest of a saved result, after checking both checksums."""
    manifest_path, tensor_path = folder / MANIFEST, folder / TENSORS
    if not manifest_path.is_file() or not tensor_path.is_file():
        raise SaveError(f"{folder} is not a saved result (expected {MANIFEST} and {TENSORS})")
    try:
        manifest = read_json(manifest_path)
    except SaveError as err:
        cause = err.__cause__ or err
        raise SaveError(f"{manifest_path} is corrupt or unreadable: {_reason(cause)}") from cause
    if not isinstance(manifest, dict):
        raise SaveError(f"{manifest_path} is corrupt: it holds a {type(manifest).__name__}, not an object")
    # Nothing the manifest says about itself switches a check off: a format other than
    # this one is refused, whether older, newer, missing or not a number.
    version_ = manifest.get("format_version")
    if not isinstance(version_, int) or isinstance(version_, bool):
        raise SaveError(f"{manifest_path}: format_version must be the integer {FORMAT_VERSION}, got "
                        f"{'nothing' if version_ is None else repr(version_)[:60]}: the manifest was "
                        "edited or damaged")
    if version_ > FORMAT_VERSION:
        raise SaveError(
            f"{folder} was written by a newer tl_multilingual (format {version_}); upgrade to read it"
        )
    if version_ != FORMAT_VERSION:
        raise SaveError(
            f"{manifest_path}: format {version_} is not a format this version reads (it reads "
            f"{FORMAT_VERSION}, whose manifest carries a checksum): the manifest was edited or "
            "damaged, or the result predates the checksum; compute and save it again"
        )
    if manifest.get("checksum") != _digest(manifest):
        raise SaveError(
            f"{manifest_path} does not match its checksum: the manifest was edited or damaged, so "
            "what its tensors mean (languages, model, settings) cannot be trusted"
        )
    files = manifest.get("files")
    expected = files.get(TENSORS) if isinstance(files, dict) else None
    try:
        actual = sha256_file(tensor_path)
    except OSError as err:
        raise SaveError(f"cannot read {tensor_path}: {err}") from err
    if expected != actual:
        raise SaveError(f"{tensor_path} does not match its manifest checksum: the file is corrupt")
    return manifest


def read_result(path: str | Path, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by [`write_result()`][tl_multilingual.persist.write_result], checking its kind and checksums.

    An interrupted save of the folder is recovered first (see [`recover()`][tl_multilingual.persist.recover]).

    Raises:
        SaveError: the folder is missing, foreign, of another kind, corrupt or edited.
    """
    folder = Path(path)
    recover(folder)
    manifest = _verify(folder)
    if manifest.get("kind") != kind:
        raise SaveError(f"{folder} holds a {manifest.get('kind')!r}, not a {kind!r}")
    tensor_path = folder / TENSORS
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as err:
        raise SaveError(f"{tensor_path} is corrupt: {err}") from err
    return tensors, manifest


_MISSING = object()


def manifest_field(
    manifest: Mapping[str, Any],
    name: str,
    types: type | tuple[type, ...],
    *,
    where: str | Path,
    default: Any = _MISSING,
    check: Callable[[Any], bool] | None = None,
    expect: str | None = None,
) -> Any:
    """The field ``name`` of a loaded manifest, checked to be of ``types`` (``bool`` is
    never taken for a number) and to pass ``check``.

    Raises:
        SaveError: the field is missing (and has no ``default``) or invalid, naming the
            file and the field.
    """
    if name not in manifest:
        if default is _MISSING:
            raise SaveError(f"{where}: the manifest lacks the field {name!r}")
        return default
    value = manifest[name]
    allowed = types if isinstance(types, tuple) else (types,)
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if ok and check is not None:
        try:
            ok = bool(check(value))
        except (TypeError, ValueError, AttributeError):
            ok = False
    if not ok:
        wanted = expect or " or ".join(t.__name__ for t in allowed)
        raise SaveError(f"{where}: the manifest field {name!r} must be {wanted}, got {value!r:.80}")
    return value


def read_torch_file(path: str | Path, *, what: str, error: type[TLMultilingualError] = SaveError) -> Any:
    """Load a ``torch.save`` file of the reference implementations with
    ``weights_only=True`` (no code in the file is ever run).

    Raises:
        error: the file is missing, unreadable, not a torch file, or a pickle that
            asks for anything but tensors and plain containers (the cause is chained).
    """
    import pickle
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError, zipfile.BadZipFile,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(f"cannot read {what} {path}: {first}") from err


def write_tables(path: str | Path, tables: Mapping[str, Any], record: Mapping[str, Any]) -> Path:
    """Save a result made of tables: one ``<name>.csv`` per ``pandas`` frame of
    ``tables`` and ``result.json`` (``record``: its ``kind``, provenance and settings),
    replaced together (``atomic_folder``). An existing folder is replaced only when it
    holds nothing but such files.

    Raises:
        SaveError: ``path`` holds something else, or writing failed.
    """
    folder = Path(path)
    names = {f"{name}.csv" for name in tables} | {"result.json"}
    with atomic_folder(folder, replaceable=lambda p: set(os.listdir(p)) <= names) as staging:
        for name, frame in tables.items():
            # every text quoted: a carriage return inside a generated text stays in its cell
            text = frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
            (staging / f"{name}.csv").write_text(text, encoding="utf-8")
        (staging / "result.json").write_text(json.dumps(dict(record), indent=1, default=str), encoding="utf-8")
    return folder


def read_tables(
    path: str | Path, names: Sequence[str], kind: str, what: str,
    text_columns: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read what [`write_tables()`][tl_multilingual.persist.write_tables] saved:
    ``(record, {name: frame})``.

    Args:
        path: the folder.
        names: the tables expected.
        kind: the record's ``kind`` expected (``tl_multilingual.BenchmarkEffects``).
        what: the result, in words, for messages.
        text_columns: per table, columns read as text even when their values look
            like numbers (generated texts); empty cells are read as missing.

    Raises:
        SaveError: the folder is missing, damaged, or holds another kind of result.
    """
    import pandas as pd

    folder = Path(path)
    recover(folder)
    try:
        record = read_json(folder / "result.json", what=f"the record of a {what}")
        texts = text_columns or {}
        frames = {
            name: pd.read_csv(folder / f"{name}.csv", dtype=dict.fromkeys(texts.get(name, ()), str))
            for name in names
        }
    except (OSError, ValueError) as err:  # ValueError: JSON, UTF-8 and CSV parsing
        raise SaveError(f"{folder} is not a saved {what}: {err}") from err
    if not isinstance(record, dict) or record.get("kind") != kind:
        raise SaveError(f"{folder / 'result.json'} is not the record of a {what}")
    return record, frames

"""Saving results: the folder format, its two checksums, the manifest fields, and atomic
writes (nothing half-written, the previous version kept, leftovers recovered)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from tl_multilingual import persist
from tl_multilingual.errors import SaveError, StatsError


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def save(folder, value: float = 1.0, **manifest):
    return persist.write_result(
        folder,
        kind="test.Kind",
        tensors={"x": torch.full((3, 2), value)},
        manifest={"note": "n", **manifest},
    )


def test_a_result_reads_back_with_its_manifest_and_both_checksums(tmp_path):
    folder = save(tmp_path / "r", 2.5, languages=["en", "fr"])
    assert sorted(os.listdir(folder)) == [persist.MANIFEST, persist.TENSORS]
    tensors, manifest = persist.read_result(folder, kind="test.Kind")
    assert torch.equal(tensors["x"], torch.full((3, 2), 2.5))
    assert manifest["languages"] == ["en", "fr"] and manifest["note"] == "n"
    assert manifest["kind"] == "test.Kind" and manifest["format_version"] == persist.FORMAT_VERSION
    assert manifest["versions"] == persist.library_versions()
    tensor_hash = hashlib.sha256((folder / persist.TENSORS).read_bytes()).hexdigest()
    assert (
        manifest["files"]
        == {persist.TENSORS: tensor_hash}
        == {persist.TENSORS: persist.sha256_file(folder / persist.TENSORS)}
    )
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    assert manifest["checksum"] == hashlib.sha256(text.encode()).hexdigest()


def test_an_edited_manifest_or_tensor_file_is_refused(tmp_path):
    folder = save(tmp_path / "r")
    path = folder / persist.MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "note": "edited"}))
    with pytest.raises(SaveError, match="does not match its checksum"):
        persist.read_result(folder, kind="test.Kind")
    folder = save(tmp_path / "s")
    data = bytearray((folder / persist.TENSORS).read_bytes())
    data[-1] ^= 1
    (folder / persist.TENSORS).write_bytes(bytes(data))
    with pytest.raises(SaveError, match="corrupt"):
        persist.read_result(folder, kind="test.Kind")


def test_the_kind_and_the_format_version_are_checked(tmp_path):
    folder = save(tmp_path / "r")
    with pytest.raises(SaveError, match="not a 'other.Kind'"):
        persist.read_result(folder, kind="other.Kind")
    path = folder / persist.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] = persist.FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(SaveError, match="newer tl_multilingual"):
        persist.read_result(folder, kind="test.Kind")
    with pytest.raises(SaveError, match="not a saved result"):
        persist.read_result(tmp_path / "missing", kind="test.Kind")


def test_a_foreign_folder_is_never_replaced(tmp_path):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter.tex").write_text("draft")
    with pytest.raises(SaveError, match="not a saved result"):
        save(foreign)
    assert (foreign / "chapter.tex").read_text() == "draft"
    save(tmp_path / "r", 1.0)
    save(tmp_path / "r", 2.0)  # a previous save is replaced
    assert torch.equal(
        persist.read_result(tmp_path / "r", kind="test.Kind")[0]["x"], torch.full((3, 2), 2.0)
    )


def test_manifest_fields_are_typed_and_checked():
    where = "m.json"
    m = {"n": 3, "flag": True, "name": "x", "ratio": 0.5}
    assert persist.manifest_field(m, "n", int, where=where) == 3
    assert (
        persist.manifest_field(m, "ratio", (int, float), where=where, check=lambda v: 0 < v < 1)
        == 0.5
    )
    assert persist.manifest_field(m, "absent", int, where=where, default=7) == 7
    with pytest.raises(SaveError, match="'flag' must be int or float"):
        persist.manifest_field(m, "flag", (int, float), where=where)  # a bool is never a number
    assert persist.manifest_field(m, "flag", bool, where=where) is True
    with pytest.raises(SaveError, match="m.json: the manifest lacks the field 'absent'"):
        persist.manifest_field(m, "absent", int, where=where)
    with pytest.raises(SaveError, match="'ratio' must be a share"):
        persist.manifest_field(
            m, "ratio", float, where=where, check=lambda v: v > 1, expect="a share"
        )
    with pytest.raises(SaveError, match="'name' must be"):
        persist.manifest_field(m, "name", str, where=where, check=lambda v: v.missing_method())


def test_a_failed_file_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "notes.txt"
    persist.write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with persist.atomic_file(target) as staging:
            staging.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["notes.txt"]
    persist.write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["notes.txt"]


def test_a_failed_folder_build_keeps_the_previous_version_and_removes_new_parents(tmp_path):
    target = tmp_path / "a" / "b" / "result"
    with pytest.raises(SaveError, match="could not save"):
        with persist.atomic_folder(target) as staging:
            (staging / "f").write_text("x")
            raise OSError("disk full")
    assert os.listdir(tmp_path) == []  # the parents it created are gone again
    with persist.atomic_folder(target) as staging:
        (staging / "f").write_text("v1")
    with pytest.raises(KeyError):
        with persist.atomic_folder(target) as staging:
            (staging / "f").write_text("v2")
            raise KeyError("not an I/O error")  # not a file-system error: passed on unchanged
    assert (target / "f").read_text() == "v1"
    assert sorted(os.listdir(target.parent)) == ["result"]


def test_temporary_siblings_are_recognised():
    assert persist.is_temporary(persist._sibling(persist.Path("/x/run"), "tmp"))
    for name, expected in (
        (".run.tmp-12-ab", True),
        (".run.old-12-ab", True),
        ("run", False),
        (".run", False),
        (".tmp-12", False),
        ("x.tmp-1", False),
    ):
        assert persist.is_temporary(persist.Path(name)) is expected, name


def test_recover_puts_the_newest_complete_version_back(tmp_path):
    pid = dead_pid()
    old, new = save(tmp_path / "old", 1.0), save(tmp_path / "new", 2.0)
    os.utime(old / persist.MANIFEST, ns=(1, 1))  # older
    old.rename(tmp_path / f".run.old-{pid}-a")
    new.rename(tmp_path / f".run.tmp-{pid}-b")
    assert persist.recover(tmp_path / "run") == tmp_path / "run"
    assert torch.equal(
        persist.read_result(tmp_path / "run", kind="test.Kind")[0]["x"], torch.full((3, 2), 2.0)
    )
    assert os.listdir(tmp_path) == ["run"]
    # A complete target is left alone; leftovers of live processes too.
    live = tmp_path / f".run.tmp-{os.getpid()}-c"
    live.mkdir()
    assert persist.recover(tmp_path / "run") is None and live.exists()


def test_reference_files_are_read_without_running_code(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"n": 3, "over_zero": torch.ones(2, 2, dtype=torch.long)}, good)
    assert persist.read_torch_file(good, what="file")["n"] == 3
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch")
    with pytest.raises(StatsError, match=f"cannot read reference file {bad}"):
        persist.read_torch_file(bad, what="reference file", error=StatsError)

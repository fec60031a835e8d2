"""The test suite's own rules: a missing extra fails under CI instead of skipping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import require

TESTS = Path(__file__).resolve().parent


def test_a_missing_extra_skips_on_a_users_machine_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_extra_module"):
        require("no_such_extra_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_such_extra_module"):
        require("no_such_extra_module")
    assert require("json").dumps([1]) == "[1]"  # present: the module itself


def test_no_test_skips_a_missing_package_silently():
    """Every optional import goes through conftest.require (which fails under CI)."""
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(TESTS.glob("*.py"))
        if path.name != Path(__file__).name
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bimportorskip\(", line)
    ]
    assert offenders == []

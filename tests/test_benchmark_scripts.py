"""Every script under ``benchmarks/`` runs to its report on the smallest settings: the
numbers in docs/scaling.md come from scripts that still work with the library as it is.
Nothing here reads a timing; each run is checked for the line that carries its result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLOW = [pytest.mark.slow]  # a fixed-size benchmark model: a minute or two on a small CPU

SCRIPTS = [
    pytest.param(["collect_throughput.py", "--texts", "2", "--batch-size", "2", "--repeats", "1"],
                 "collection throughput / bare forward", marks=SLOW, id="collect_throughput"),
    pytest.param(["intervention_overhead.py", "--texts", "2", "--batch-size", "2", "--repeats", "1"],
                 "mean ablation", marks=SLOW, id="intervention_overhead"),
    pytest.param(["scaling.py", "--texts", "2", "--words", "8", "--batch-size", "2", "--repeats", "1",
                  "--layers", "2", "--processes", "1"], "speed-up", id="scaling"),
    pytest.param(["half_precision.py", "--texts", "2", "--words", "8", "--layers", "2", "--vocab", "512",
                  "--batch-size", "2", "--rounds", "1"], "both bf16", id="half_precision"),
    pytest.param(["identify_fixture.py", "--fixtures", "FIXTURES", "--repeats", "1"],
                 "ternary, fixed lambda", id="identify_fixture"),
    pytest.param(["stage_segmentation.py", "--refits", "2", "--exhaustive-refits", "2", "--null", "2"],
                 "| 126 |", id="stage_segmentation"),
]


def test_every_benchmark_script_is_tested():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py"}
    assert scripts == {param.values[0][0] for param in SCRIPTS}


@pytest.mark.parametrize("args, result", SCRIPTS)
def test_benchmark_script_runs_to_its_report(args, result, request):
    if "FIXTURES" in args:  # the reference fixtures (skipped without them, except under CI)
        args = [str(request.getfixturevalue("fixtures")) if a == "FIXTURES" else a for a in args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert result in done.stdout, done.stdout[-3000:]

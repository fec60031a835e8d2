"""Hand-made mutation testing: do the tests notice a plausible one-line bug?

Each mutant is one single-point change to one file of the package (an exact snippet
and its replacement) with the test files that should notice it. The script applies
the mutants one at a time to a temporary copy of the repository (the working tree is
never edited), runs those tests with a timeout, and prints per mutant

- ``killed``: the tests failed (or timed out, or could not import the mutated code);
- ``survived``: the tests passed: no test guards this behaviour;
- ``stale``: the snippet is not in the file (any more), or more than once: update the
  mutant after moving code. Stale mutants are listed, never silently skipped, and do
  not count in the score.

The score is killed / (killed + survived). Run it from anywhere::

    python tools/mutants.py                      # every mutant
    python tools/mutants.py --only collect-      # mutants whose name starts with this
    python tools/mutants.py --tests-rev HEAD~3   # the tests as they were at a revision
    python tools/mutants.py --list               # names and status of the snippets only

It is not part of the test run. Each mutant runs a fresh pytest process (``-x``, so a
killed mutant stops at the first failure); on a small machine a full run takes a while:
use ``--only`` while working on one module, and ``--jobs`` where there are spare cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tl_multilingual"
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv*", "__pycache__", ".pytest_cache", "site", "runs", "study",
                                     "*.egg-info", "build", "dist")


@dataclass(frozen=True)
class Mutant:
    """One single-point change: in ``file`` (relative to the package), ``original`` (which
    must occur exactly once) becomes ``replacement``; ``tests`` (files or node ids under
    ``tests/``) should fail on it."""

    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


def m(name: str, file: str, original: str, replacement: str, *tests: str) -> Mutant:
    return Mutant(name, file, original, replacement, tuple(f"tests/{t}" for t in tests))


MUTANTS: list[Mutant] = [
    # -- collect: the streaming totals --------------------------------------------------
    m("collect-float32-sums", "neurons/collect.py",
      "self.sums = torch.zeros(shape, dtype=torch.float64, device=device)",
      "self.sums = torch.zeros(shape, dtype=torch.float32, device=device)",
      "test_collect.py"),
    m("collect-float32-squares", "neurons/collect.py",
      "self.sum_squares = torch.zeros(shape, dtype=torch.float64, device=device)",
      "self.sum_squares = torch.zeros(shape, dtype=torch.float32, device=device)",
      "test_collect.py"),
    m("collect-sums-of-gate-input", "neurons/collect.py",
      "for part in acts.split(self.chunk_rows):",
      "for part in flat.split(self.chunk_rows):",
      "test_collect.py"),
    m("collect-gate-not-act-fn", "neurons/collect.py",
      "acts = self.adapter.neuron_values(layer, flat)",
      "acts = flat",
      "test_collect.py"),
    m("collect-threshold-ge", "neurons/collect.py",
      "(acts > self.threshold)",
      "(acts >= self.threshold)",
      "test_collect.py"),
    m("collect-tokens-count-padding", "neurons/collect.py",
      "self.tokens[self.language] += n",
      "self.tokens[self.language] += counted.numel()",
      "test_collect.py"),
    m("collect-rows-all-positions", "neurons/collect.py",
      "self.rows = None if n == counted.numel() else counted.reshape(-1).nonzero().squeeze(1)",
      "self.rows = None",
      "test_collect.py"),
    m("collect-squares-abs", "neurons/collect.py",
      "self.sum_squares[layer, :, k] += (part * part).sum(0)",
      "self.sum_squares[layer, :, k] += part.abs().sum(0)",
      "test_collect.py"),
    # -- stats ---------------------------------------------------------------------------
    m("stats-variance-mean-not-squared", "neurons/stats.py",
      "- mean**2).clamp_min(0)",
      "- mean).clamp_min(0)",
      "test_stats.py", "test_collect.py"),
    m("stats-add-drops-other-tokens", "neurons/stats.py",
      "self.tokens + other.tokens.to(self.tokens.device)",
      "self.tokens.clone()",
      "test_stats.py"),
    m("stats-select-keeps-all-sums", "neurons/stats.py",
      "sums=_pick(self.sums, idx),",
      "sums=self.sums,",
      "test_stats.py"),
    m("stats-reference-abs-not-clamp", "neurons/stats.py",
      "oz = diff.clamp_min(0)",
      "oz = diff.abs()",
      "test_stats.py"),
    m("stats-probability-per-total", "neurons/stats.py",
      "return values.to(dtype) / self.tokens.to(device=values.device, dtype=dtype)",
      "return values.to(dtype) / self.tokens.sum().to(device=values.device, dtype=dtype)",
      "test_stats.py"),
    m("stats-redraw-keeps-counts", "neurons/stats.py",
      "counts = torch.binomial(tokens, probs, generator=generator).long()",
      "counts = self.active_counts.clone()",
      "test_stats.py"),
    # -- identify ------------------------------------------------------------------------
    m("identify-lape-all-zero-inf", "neurons/identification.py",
      "return _entropy(probs, if_zero=0.0)",
      "return _entropy(probs, if_zero=math.inf)",
      "test_identification.py"),
    m("identify-ternary-all-zero-zero", "neurons/identification.py",
      "_entropy(probs, if_zero=math.log(k_langs)) / math.log(k_langs)",
      "_entropy(probs, if_zero=0.0) / math.log(k_langs)",
      "test_identification.py", "test_classes.py"),
    m("identify-bar-off-by-one", "neurons/identification.py",
      "min(max(round(ratio * flat.numel()), 1), flat.numel())",
      "min(max(round(ratio * flat.numel()) + 1, 1), flat.numel())",
      "test_identification.py"),
    m("identify-ties-to-higher-index", "neurons/identification.py",
      "ties = (scores == kth).nonzero().squeeze(1)[: k - below.numel()]",
      "ties = (scores == kth).nonzero().squeeze(1).flip(0)[: k - below.numel()]",
      "test_identification.py"),
    m("identify-prefilter-ge", "neurons/identification.py",
      "~(probs > bar).any(-1)",
      "~(probs >= bar).any(-1)",
      "test_identification.py"),
    m("identify-lape-membership-ge", "neurons/identification.py",
      "return Selection(chosen, probs > bar, bar)",
      "return Selection(chosen, probs >= bar, bar)",
      "test_identification.py"),
    m("identify-norm-max-short", "neurons/identification.py",
      "sum(1.0 / i for i in range(1, n_languages + 1)) / n_languages",
      "sum(1.0 / i for i in range(1, n_languages)) / n_languages",
      "test_identification.py"),
    m("identify-sweep-keeps-low", "neurons/identification.py",
      "best, lo = mid, mid",
      "best, hi = mid, mid",
      "test_identification.py"),
    # -- interventions -------------------------------------------------------------------
    m("interventions-pooled-mean-is-language-0", "causal/interventions.py",
      'target: Tensor | float = stats._require("sums").sum(-1) / stats.tokens.sum()',
      "target: Tensor | float = stats.means()[..., 0]",
      "test_interventions.py"),
    m("interventions-exit-keeps-hooks", "causal/interventions.py",
      "self._stack.pop().close()",
      "self._stack[-1]",
      "test_interventions.py"),
    m("interventions-set-ignores-up", "causal/interventions.py",
      "scale = up[..., self.index] if self.gated else 1.0",
      "scale = 1.0",
      "test_interventions.py"),
    m("interventions-add-ignores-up", "causal/interventions.py",
      "current + self.value * scale",
      "current + self.value",
      "test_interventions.py"),
    m("interventions-positions-inverted", "causal/interventions.py",
      "new = torch.where(rows[..., None], new, current)",
      "new = torch.where(rows[..., None], current, new)",
      "test_interventions.py"),
    m("interventions-steer-add-ignores-source", "causal/interventions.py",
      "delta = strength * (target - _language_means(stats, source))",
      "delta = strength * target",
      "test_interventions.py"),
    m("interventions-layers-ignored", "causal/interventions.py",
      "return mask if layers is None else mask.restrict(lm.layer_range(layers))",
      "return mask",
      "test_interventions.py"),
    # -- evaluate ------------------------------------------------------------------------
    m("evaluate-first-position-guard", "causal/evaluate.py",
      "sequences.append(replace(seq, start=max(seq.start, 1)))",
      "sequences.append(seq)",
      "test_evaluate.py"),
    m("readout-targets-shift", "model/readout.py",
      "targets = counted[:, 1:].to(final.device)",
      "targets = counted[:, :-1].to(final.device)",
      "test_evaluate.py"),
    m("evaluate-perplexity-per-text", "causal/evaluate.py",
      'grouped["nll"] = grouped["nll"] / grouped["tokens"]',
      'grouped["nll"] = grouped["nll"] / grouped["texts"]',
      "test_evaluate.py"),
    m("evaluate-length-normalize-ignored", "causal/evaluate.py",
      "(n if length_normalize else 1)",
      "(n if length_normalize else n)",
      "test_evaluate.py"),
    m("evaluate-choice-min", "causal/evaluate.py",
      "best = max(range(k), key=lambda j: scores[j])",
      "best = min(range(k), key=lambda j: scores[j])",
      "test_evaluate.py"),
    # -- lens ----------------------------------------------------------------------------
    m("readout-head-skips-final-transform", "model/readout.py",
      "        return transform(logits)\n",
      "        return logits\n",
      "test_lens.py", "test_evaluate.py"),
    m("lens-rank-of-worst-token", "stages/lens.py",
      "best = chosen.max(-1).values",
      "best = chosen.min(-1).values",
      "test_lens.py"),
    m("lens-probability-max-not-sum", "stages/lens.py",
      "p_out[i, :, k] = chosen.sum(-1).cpu()",
      "p_out[i, :, k] = chosen.max(-1).values.cpu()",
      "test_lens.py"),
    m("lens-curves-nan-as-zero", "stages/lens.py",
      "mean = torch.nanmean(self.probability, dim=0).numpy()",
      "mean = self.probability.nan_to_num(0.0).mean(0).numpy()",
      "test_lens.py"),
    m("lens-entropy-mean", "stages/lens.py",
      "entropy = -(probs * logp).sum(-1)",
      "entropy = -(probs * logp).mean(-1)",
      "test_lens.py"),
    m("readout-reads-resid-pre", "model/readout.py",
      "(lm.resid_hook(layer), keep(layer))",
      '(f"blocks.{layer}.hook_resid_pre", keep(layer))',
      "test_lens.py"),
    # -- stages --------------------------------------------------------------------------
    m("stages-language-neurons-all", "stages/features.py",
      "language = neurons.membership.any(-1).sum(1)",
      "language = neurons.membership.all(-1).sum(1)",
      "test_mapping.py"),
    m("stages-layers-overlap", "stages/stage_map.py",
      "return {s: range(edges[k], edges[k + 1]) for k, s in enumerate(STAGES)}",
      "return {s: range(edges[k], edges[k + 1] + 1) for k, s in enumerate(STAGES)}",
      "test_mapping.py"),
    m("stages-max-last-ignored", "stages/segmentation.py",
      "ok = ok & (m4 + _EPS >= m1) & (m4 + _EPS >= m2) & (m4 + _EPS >= m3)",
      "ok = ok & (m4 + _EPS >= m1)",
      "test_segmentation.py", "test_mapping.py"),
    # -- sharing -------------------------------------------------------------------------
    m("sharing-all-shared-off-by-one", "neurons/sharing_classes.py",
      "out[count == n_languages] = 0",
      "out[count >= n_languages - 1] = 0",
      "test_sharing_classes.py"),
    m("sharing-any-counts-bos", "neurons/sharing_classes.py",
      "counted[torch.arange(len(chunk)), start] = real.sum(1) == 1  # keep BOS only if alone",
      "counted[torch.arange(len(chunk)), start] = True",
      "test_sharing_classes.py"),
    m("sharing-any-is-last", "neurons/sharing_classes.py",
      'if position == "last":',
      'if position in ("last", "any"):',
      "test_sharing_classes.py"),
]


def prepare(workdir: Path, tests_rev: str | None) -> None:
    """A copy of the repository in ``workdir``; with ``tests_rev``, its tests/ replaced by
    the tests of that revision."""
    shutil.copytree(ROOT, workdir, ignore=COPY_IGNORE, dirs_exist_ok=True)
    if tests_rev:
        shutil.rmtree(workdir / "tests")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", tests_rev, "tests"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)


def snippet_status(mutant: Mutant, root: Path = ROOT) -> str:
    source = (root / PACKAGE / mutant.file).read_text(encoding="utf-8")
    count = source.count(mutant.original)
    if count == 1:
        return "ok"
    return "stale (snippet not found)" if count == 0 else f"stale (snippet found {count} times)"


def run_one(mutant: Mutant, workdir: Path, timeout: float) -> tuple[str, str, float]:
    """Apply one mutant in ``workdir``, run its tests, restore the file."""
    status = snippet_status(mutant, workdir)
    if status != "ok":
        return "stale", status, 0.0
    tests = [t for t in mutant.tests if (workdir / t.split("::")[0]).is_file()]
    if not tests:
        return "survived", "no test file", 0.0
    path = workdir / PACKAGE / mutant.file
    pristine = path.read_text(encoding="utf-8")
    path.write_text(pristine.replace(mutant.original, mutant.replacement, 1), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(workdir), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    env.pop("CI", None)
    fixtures = ROOT.parent / "shared" / "fixtures"  # where the tests look beside a checkout
    if "TLM_FIXTURES" not in env and fixtures.is_dir():
        env["TLM_FIXTURES"] = str(fixtures)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed", f"timeout after {timeout:.0f}s", time.monotonic() - start
    finally:
        path.write_text(pristine, encoding="utf-8")
    seconds = time.monotonic() - start
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else done.stderr.strip()[-200:]
    if done.returncode == 0:
        return "survived", last, seconds
    if done.returncode == 5:
        return "survived", "no tests collected", seconds
    failed = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), last)
    return "killed", failed[:160], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run mutants whose name starts with one of these")
    parser.add_argument("--tests-rev", default=None, help="use the tests/ folder of this git revision")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant (default 900)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy")
    parser.add_argument("--list", action="store_true", help="only list the mutants and whether their snippet is found")
    args = parser.parse_args(argv)

    names = [mu.name for mu in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("mutant names must be unique")
    chosen = [mu for mu in MUTANTS if not args.only or any(mu.name.startswith(p) for p in args.only)]
    if args.list:
        for mu in chosen:
            print(f"{mu.name:45s} {mu.file:18s} {snippet_status(mu)}")
        return 0

    jobs = max(1, min(args.jobs, len(chosen)))
    with tempfile.TemporaryDirectory(prefix="tlm-mutants-") as tmp:
        workdirs = [Path(tmp) / f"copy{i}" for i in range(jobs)]
        for workdir in workdirs:
            prepare(workdir, args.tests_rev)
        free = list(workdirs)

        def task(mutant: Mutant) -> tuple[str, str, float]:
            workdir = free.pop()
            try:
                return run_one(mutant, workdir, args.timeout)
            finally:
                free.append(workdir)

        results: dict[str, tuple[str, str, float]] = {}
        with ThreadPoolExecutor(jobs) as pool:
            for mutant, result in zip(chosen, pool.map(task, chosen)):
                results[mutant.name] = result
                outcome, detail, seconds = result
                print(f"{outcome:8s} {mutant.name:45s} {seconds:6.0f}s  {detail}", flush=True)

    killed = sum(r[0] == "killed" for r in results.values())
    survived = [name for name, r in results.items() if r[0] == "survived"]
    stale = [name for name, r in results.items() if r[0] == "stale"]
    print()
    print(f"score: {killed}/{killed + len(survived)} killed" + (f", {len(stale)} stale" if stale else ""))
    if survived:
        print("survived: " + ", ".join(survived))
    if stale:
        print("stale (update these mutants): " + ", ".join(stale))
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main())

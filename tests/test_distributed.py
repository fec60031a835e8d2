"""Data parallelism over torch.distributed (gloo, on 127.0.0.1 only): every step equals
one process; the study under torchrun, a killed rank, a two-node loopback run; merging
statistics shards; totals and interventions on the device each hook sees."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import tiny
import torch
from dist_worker import close_frames

import tl_multilingual as tlm
from tl_multilingual import cli, distributed
from tl_multilingual.errors import StatsError
from tl_multilingual.study.steps import STEPS

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
# No test here waits on a time budget: a failing rank ends its run at once (its peers' collectives
# fail, see tl_multilingual.distributed). These limits only stop a run that hangs, and lie far
# beyond what any machine, however slow or loaded, takes for these seconds-long runs.
HANG_GUARD_S = 1800.0
COLLECTIVE_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               TLM_DIST_TIMEOUT=str(COLLECTIVE_TIMEOUT_S))
    return env


# -- without a process group nothing changes -------------------------------------------


def test_without_a_process_group_the_helpers_are_the_identity():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(5, [3, 1, 4, 1, 5]) == [0, 1, 2, 3, 4]
    t = torch.arange(4)
    assert distributed.all_reduce_sum(t) is t
    assert distributed.gather_in_order(["a", "b"], [0, 1], 2) == ["a", "b"]
    assert distributed.on_main(lambda: 7) == 7
    assert distributed.broadcast({"x": 1}) == {"x": 1}


# -- every step on two processes equals one process ------------------------------------


def test_every_step_on_two_gloo_processes_equals_one_process(tmp_path):
    import dist_worker
    import torch.multiprocessing as mp

    results = tmp_path / "ok"
    context = mp.start_processes(dist_worker.run, args=(2, free_port(), str(results)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + HANG_GUARD_S
    while not context.join(timeout=5):  # a worker that fails raises here at once
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the distributed workers hung")
    assert results.read_text() == "ok"


# -- merging shards at rest -------------------------------------------------------------


@pytest.fixture(scope="module")
def shards():
    lm = tlm.adapt(tiny.bridge("llama"))
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    first = tlm.Corpus.from_dict({lang: texts[:1] for lang, texts in tiny.SAMPLE_TEXT.items()})
    rest = tlm.Corpus.from_dict({lang: texts[1:] for lang, texts in tiny.SAMPLE_TEXT.items()})
    collect = lambda c, **kw: tlm.collect_stats(lm, c, batch_size=2, progress=False, **kw)  # noqa: E731
    return lm, collect(corpus), collect(first), collect(rest), collect


def _equal(a: tlm.ActivationStats, b: tlm.ActivationStats) -> None:
    assert a.languages == b.languages
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.active_counts, b.active_counts)
    assert torch.allclose(a.sums, b.sums, rtol=1e-5, atol=1e-5)
    assert torch.allclose(a.sum_squares, b.sum_squares, rtol=1e-5, atol=1e-5)


def test_merged_shards_equal_one_collection_over_their_union(shards):
    _, whole, first, rest, _ = shards
    merged = tlm.ActivationStats.merge([first, rest])
    _equal(merged, whole)
    assert len(merged.corpus["merged"]) == 2
    assert tlm.ActivationStats.merge([whole]).corpus == whole.corpus


def test_merge_refuses_mismatched_shards_and_warns_on_double_counting(shards):
    lm, _, first, rest, collect = shards
    other = tlm.Corpus.from_dict({lang: texts[1:] for lang, texts in tiny.SAMPLE_TEXT.items()})
    with pytest.raises(StatsError, match="threshold"):
        tlm.ActivationStats.merge([first, collect(other, threshold=0.5)])
    with pytest.raises(StatsError, match="token_policy"):
        tlm.ActivationStats.merge([first, collect(other, token_policy="last")])
    foreign = tlm.collect_stats(tlm.adapt(tiny.bridge("gpt2")), other, progress=False)
    with pytest.raises(StatsError):
        tlm.ActivationStats.merge([first, foreign])
    with pytest.raises(StatsError, match="at least one"):
        tlm.ActivationStats.merge([])
    with pytest.warns(UserWarning, match="counted twice"):
        tlm.ActivationStats.merge([first, rest, first])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tlm.ActivationStats.merge([first, rest])


def test_merge_command(shards, tmp_path, capsys):
    _, whole, first, rest, _ = shards
    first.save(tmp_path / "a")
    rest.save(tmp_path / "b")
    assert cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "all")]) == 0
    _equal(tlm.ActivationStats.load(tmp_path / "all"), whole)
    assert cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "twice")]) == 0
    assert "counted twice" in capsys.readouterr().err
    strict = tlm.collect_stats(tlm.adapt(tiny.bridge("llama")), tlm.Corpus.from_dict(tiny.SAMPLE_TEXT),
                               threshold=0.5, progress=False)
    strict.save(tmp_path / "c")
    assert cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "bad")]) == 2
    assert "differ in threshold" in capsys.readouterr().err and not (tmp_path / "bad").exists()


# -- models split across devices --------------------------------------------------------


def test_totals_live_on_the_device_each_layer_sees():
    """A fake layer-to-device map (layer 1 on the meta device): each layer's totals and
    the indices of its counted positions follow the tensor its hook sees, and a
    cross-device addition would raise."""
    from tl_multilingual.neurons.collect import _Totals

    lm = tlm.adapt(tiny.bridge("llama"))
    totals = _Totals(lm, n_languages=2, threshold=0.0)
    totals.rows = torch.tensor([0, 2])
    placement = {0: torch.device("cpu"), 1: torch.device("meta")}
    for layer, device in placement.items():
        totals._reducer(layer)(torch.randn(1, 3, lm.d_mlp, device=device), None)
    for layer, device in placement.items():
        assert all(t.device == device for t in totals.layers[layer])
    assert set(totals._placed) == set(placement.values())
    assert totals.layers[0][0][:, 0].sum() > 0  # counted on the CPU layer


def test_intervention_indices_follow_the_hooked_tensor():
    from tl_multilingual.causal.interventions import Edit, _LayerEdit, _Where

    lm = tlm.adapt(tiny.bridge("llama"))
    mask = tlm.NeuronMask.from_pairs([(1, 0), (1, 3)], lm.n_layers, lm.d_mlp)
    plan = _LayerEdit.build(lm, Edit(mask, "scale", 2.0), 1, _Where(None))
    out = torch.ones(1, 2, lm.d_mlp, device="meta")
    plan.apply(out, None, None)  # indices and values placed on the meta device, no cross-device error
    index, value = plan.on(torch.device("meta"))
    assert index.device.type == "meta" and value.device.type == "meta"
    cpu = torch.ones(1, 2, lm.d_mlp)
    plan.apply(cpu, None, None)
    assert cpu[0, 0, [0, 3]].tolist() == [2.0, 2.0] and cpu[0, 0, 1] == 1.0


class HostSyncs(torch.overrides.TorchFunctionMode):
    """Counts the calls that make the host wait for the device (``.item()``,
    ``.tolist()``, ``.cpu()``, ``nonzero``, ``int(tensor)``...) made by the library's
    own code (not by the model's)."""

    NAMES = {"item", "tolist", "cpu", "nonzero", "__int__", "__float__", "__bool__", "__index__"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES and "tl_multilingual" in sys._getframe(1).f_code.co_filename:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def count_syncs(fn, *args) -> list[str]:
    with HostSyncs() as watch:
        fn(*args)
    return watch.calls


def test_the_hot_loops_do_not_wait_for_the_device_per_batch():
    """The same calls make as many host syncs with one batch as with one text per
    batch: none of them happens per batch (sharing: one transfer per batch, not per
    layer)."""
    lm = tlm.adapt(tiny.bridge("llama"))
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    n_texts = len(corpus)
    for fn in (lambda b: tlm.collect_stats(lm, corpus, batch_size=b, progress=False),
               lambda b: tlm.perplexity(lm, corpus, per_text=True, batch_size=b)):
        fn(n_texts)  # the one-time check of the output head syncs, on the first call only
        assert sorted(count_syncs(fn, 1)) == sorted(count_syncs(fn, n_texts))
    records = [{"id": str(i), "text": {"en": en, "fr": fr}}
               for i, (en, fr) in enumerate(zip(tiny.SAMPLE_TEXT["en"], tiny.SAMPLE_TEXT["fr"]))]
    counted = {}
    for n in (len(records) - 1, len(records)):
        items = tlm.ParallelItems.from_records(records[:n])
        calls = count_syncs(lambda items=items: tlm.sharing(lm, items, batch_size=1, progress=False))
        assert "item" not in calls and "nonzero" not in calls
        counted[n] = calls.count("cpu")
    # One more item adds one batch per language, and one transfer per batch, not per layer
    # (the rest, such as the weights' fingerprint, is once per call).
    assert counted[len(records)] - counted[len(records) - 1] == len(items.languages)


def test_compute_dtype_runs_the_body_in_bfloat16_and_keeps_the_loss_in_float32():
    lm = tlm.adapt(tiny.bridge("llama"))
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    exact = tlm.perplexity(lm, corpus)
    half = tlm.perplexity(lm, corpus, compute_dtype=torch.bfloat16)
    relative = (half["nll"] - exact["nll"]).abs() / exact["nll"]
    assert (relative > 0).any()  # the body really ran in bfloat16
    assert (relative < 0.02).all()


# -- the study under torchrun -----------------------------------------------------------


FAST = ["--languages", "en,fr,de", "--eval-texts", "2", "--controls", "1", "--batch-size", "8",
        "--max-tokens-per-language", "300", "--allow-unsupported-stages"]  # a random model's map
FAULT = REPO / "tests" / "dist_fault.py"


def torchrun(args: list[str], *, nproc: int = 2, extra: list[str] | None = None, script: Path = FAULT,
             env: dict[str, str] | None = None):
    launcher = [str(TORCHRUN), f"--nproc-per-node={nproc}", "--max-restarts=0", *(extra or [])]
    if extra is None:
        launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--local-addr=127.0.0.1"]
    return subprocess.Popen([*launcher, str(script), *args], env={**loopback_env(), **(env or {})}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"torchrun hung:\n{output}")
    return process.returncode, output


def tables(out: Path) -> dict:
    """What a study computed, read back from its folder."""
    stats = tlm.ActivationStats.load(out / "statistics")
    return {
        "tokens": stats.tokens, "active": stats.active_counts, "sums": stats.sums,
        "neurons": tlm.LanguageNeurons.load(out / "neurons" / "ternary").membership,
        "lens": tlm.LensResult.load(out / "lens").probability,
        "stages": json.loads((out / "stages.json").read_text())["boundaries"],
        "cells": pd.read_csv(out / "deactivation" / "cells.csv"),
        # skipped when no language has a specific neuron (the study says why)
        "stage_effects": (pd.read_csv(out / "stage_effects" / "cells.csv")
                          if (out / "stage_effects").exists() else None),
        "sharing": tlm.Sharing.load(out / "sharing").codes,
    }


def same_tables(a: dict, b: dict) -> None:
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["active"], b["active"])
    assert torch.allclose(a["sums"], b["sums"], rtol=1e-5, atol=1e-5)
    assert torch.equal(a["neurons"], b["neurons"]) and a["stages"] == b["stages"]
    assert torch.allclose(a["lens"], b["lens"], rtol=1e-5, atol=1e-7, equal_nan=True)
    assert (a["stage_effects"] is None) == (b["stage_effects"] is None)
    for table in ("cells", "stage_effects"):
        if a[table] is not None:
            close_frames(a[table], b[table])
    assert torch.equal(a["sharing"], b["sharing"])


@pytest.fixture(scope="module")
def single_study(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "study"
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), "--quiet", *FAST]) == 0
    return tables(out)


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_a_killed_rank_ends_the_run_cleanly_and_a_rerun_on_two_loopback_nodes_resumes(
    model_dir, single_study, tmp_path
):
    """Two ranks on one node; rank 1 is killed in the deactivation step: the run ends
    with an error on rank 0, and every finished step is saved whole. The same command
    on two torchrun nodes (c10d rendezvous on 127.0.0.1) resumes, and the study equals
    one process's."""
    out = tmp_path / "study"
    args = ["run", "--model", str(model_dir), "--out", str(out), *FAST]
    code, output = finish(torchrun(["--kill-rank=1", "--kill-at=deactivation", *args]))
    assert code != 0, output
    assert "failed on rank 0: another process has probably stopped" in output or "rank 0 stopped" in output, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"statistics", "neurons", "lens", "stages"} <= set(manifest["steps"]), output
    assert "deactivation" not in manifest["steps"] and not (out / "deactivation").exists()
    assert not leftovers(out)

    rendezvous = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                  "--rdzv-id=tlm-test", "--local-addr=127.0.0.1"]
    nodes = [torchrun(args, nproc=1, extra=rendezvous) for _ in range(2)]
    outputs = []
    for node in nodes:
        code, output = finish(node)
        assert code == 0, output
        outputs.append(output)
    both = "".join(outputs)
    for step in ("statistics", "neurons", "lens", "stages"):
        assert both.count(f"{step}: up to date") == 1, both  # resumed, and only rank 0 prints
    number = list(STEPS).index("deactivation") + 1
    total = len(STEPS) + 1  # the report is the last
    assert both.count(f"[{number}/{total}] deactivation done") == 1, both
    same_tables(tables(out), single_study)
    assert not leftovers(out)


KILLER = REPO / "tests" / "study_kill.py"
# What each long step saves, compared byte for byte with an uninterrupted run on two ranks.
LONG_STEPS = {"statistics": ["statistics/tensors.safetensors"],
              "deactivation": ["deactivation/cells.csv", "deactivation/controls.csv"]}


def killed_study(out: Path, step: str, kill_at: int) -> tuple[int, str, dict[int, dict]]:
    """A small study on two ranks; rank 1 kills itself at unit ``kill_at`` of ``step``
    (0: never). Returns the exit code, the output and the units of work of each rank
    that finished."""
    counts = out.parent / f"counts-{step}-{kill_at}-{time.monotonic_ns()}"
    counts.mkdir(parents=True)
    code, output = finish(torchrun([str(out), step, str(kill_at)], script=KILLER,
                                   env={"TLM_KILL_RANK": "1", "TLM_COUNTS": str(counts)}))
    return code, output, {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in counts.glob("rank-*.json")}


@pytest.fixture(scope="module")
def uninterrupted_on_two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks") / "study"
    code, output, counts = killed_study(out, "statistics", 0)
    assert code == 0 and sorted(counts) == [0, 1], output
    return out, counts


@pytest.mark.parametrize("step", list(LONG_STEPS))
def test_a_study_on_two_ranks_killed_inside_a_long_step_resumes_there(tmp_path, uninterrupted_on_two_ranks, step):
    """Rank 1 is killed (SIGKILL) inside a long step, after work that was saved: the rerun
    on two ranks redoes only the unsaved work and writes byte-identical results."""
    reference, counts = uninterrupted_on_two_ranks
    total = counts[1][step]
    kill_at = total - 1
    out = tmp_path / "study"
    code, output, _ = killed_study(out, step, kill_at)
    assert code != 0, output
    assert step not in json.loads((out / "manifest.json").read_text()).get("steps", {}), output
    code, output, redone = killed_study(out, step, 0)
    assert code == 0 and sorted(redone) == [0, 1], output
    # Each rank saves its statistics every 2 of its batches; rank 0 saves every finished run
    # of an experiment, and both ranks skip the saved runs.
    saved = (kill_at - 1) // 2 * 2 if step == "statistics" else kill_at - 1
    assert redone[1][step] == total - saved and redone[1][step] < total
    if step == "statistics":  # rank 0 went on alone until its peer was missed
        assert redone[0][step] < counts[0][step]
    else:
        assert redone[0][step] == redone[1][step]
    for name in LONG_STEPS[step]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / "checkpoints").exists()


# -- how units are dealt to ranks ---------------------------------------------------------


def as_rank(monkeypatch, r: int, w: int) -> None:
    """This process, as rank ``r`` of a group of ``w`` (no communication needed)."""
    monkeypatch.setattr(distributed, "active", lambda: w > 1)
    monkeypatch.setattr(distributed, "world_size", lambda: w)
    monkeypatch.setattr(distributed, "rank", lambda: r)


@pytest.mark.parametrize("w", [2, 3, 5])
def test_shards_deal_the_units_in_turn_largest_first(monkeypatch, w):
    sizes = [4, 9, 1, 9, 7, 2, 2, 8, 3, 5, 6]
    n = len(sizes)
    by_size = sorted(range(n), key=lambda i: (-sizes[i], i))  # largest first, ties by index
    parts = []
    for r in range(w):
        as_rank(monkeypatch, r, w)
        mine = distributed.shard(n, sizes)
        assert mine == sorted(by_size[r::w]) and mine == sorted(mine)
        assert distributed.shard(n) == list(range(r, n, w))  # without sizes: r, r + w, ...
        assert distributed.show_progress(True) == (r == 0) and distributed.is_main() == (r == 0)
        parts.append(mine)
    assert sorted(i for part in parts for i in part) == list(range(n))  # every unit once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    totals = [sum(sizes[i] for i in part) for part in parts]
    assert max(totals) - min(totals) <= max(sizes)  # similar work per rank
    monkeypatch.undo()
    assert distributed.shard(n, sizes) == list(range(n)) and not distributed.show_progress(False)


class _FakeGroup:
    """Stands in for torch.distributed on rank 0 of two: the other rank's contribution is given."""

    def __init__(self, other):
        self.other = other

    def all_gather_object(self, parts, payload):
        parts[0], parts[1] = payload, self.other

    def get_backend(self):
        return "gloo"

    def all_reduce(self, tensor):
        tensor += self.other


def test_gathering_keeps_the_order_and_refuses_a_mismatched_split(
    monkeypatch,
):
    as_rank(monkeypatch, 0, 2)
    monkeypatch.setattr(distributed, "_dist", lambda: _FakeGroup(([1, 3], ["b", "d"])))
    assert distributed.gather_in_order(["a", "c", "e"], [0, 2, 4], 5) == ["a", "b", "c", "d", "e"]
    with pytest.raises(tlm.DistributedError, match="gathered 5 of 6 values"):
        distributed.gather_in_order(["a", "c", "e"], [0, 2, 4], 6)
    other = torch.zeros(4, 2, dtype=torch.long)
    other[[1, 3]] = torch.tensor([[10, 11], [30, 31]])
    monkeypatch.setattr(distributed, "_dist", lambda: _FakeGroup(other))
    rows = distributed.gather_rows(torch.tensor([[0, 1], [20, 21]]), [0, 2], 4)
    assert rows.tolist() == [[0, 1], [10, 11], [20, 21], [30, 31]]

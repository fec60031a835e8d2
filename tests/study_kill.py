"""Run a small study, counting the units of work of each long step, and kill the process
(SIGKILL) when the count of one step reaches a given number: ``python study_kill.py OUT
STEP KILL_AT`` (``KILL_AT`` 0: never). Prints the counts as JSON when the study ends.

Under ``torchrun`` every rank joins the process group and counts its own units; only
the rank named by ``TLM_KILL_RANK`` (default 0) kills itself, and each rank writes its
counts to ``$TLM_COUNTS/rank-R.json`` (not to the output the ranks share)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import tl_multilingual as tlm
from tl_multilingual import distributed
from tl_multilingual.experiments import deactivation, stage_deactivation
from tl_multilingual.neurons import collect
from tl_multilingual.study.pipeline import Study, StudySettings

SETTINGS = StudySettings(batch_size=2, held_out=4, min_held_out=4, min_train_texts=5, eval_texts=2,
                         controls=1, n_boot=10, sharing_items=3, lens_pairs=1, lens_words=4,
                         stage_words=2, top_rate=0.05, variants=("specific",), checkpoint_every=2,
                         allow_unsupported_stages=True)  # four layers: the only segmentation

# What one unit of each long step's work is: a batch of statistics, a run of an experiment.
UNITS = {"statistics": (collect._Totals, "run"),
         "deactivation": (deactivation._Evaluation, "units"),
         "stage_effects": (stage_deactivation, "text_nll")}


def main(out: str, step: str, kill_at: int) -> None:
    distributed.init_from_env("cpu")
    if distributed.rank() != int(os.environ.get("TLM_KILL_RANK", "0")):
        kill_at = 0
    counts = dict.fromkeys(UNITS, 0)

    def counting(unit, original):
        def counted(*args, **kwargs):
            counts[unit] += 1
            if unit == step and counts[unit] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        return counted

    for unit, (owner, name) in UNITS.items():
        setattr(owner, name, counting(unit, getattr(owner, name)))
    model = tlm.models.tiny("llama", n_layers=4)
    languages = ["en", "fr", "zh"]
    study = Study(out, model, tlm.data.parallel(languages).head(12), SETTINGS,
                  words=tlm.data.words(languages), quiet=True)
    study.run()
    if distributed.active():
        Path(os.environ["TLM_COUNTS"], f"rank-{distributed.rank()}.json").write_text(json.dumps(counts))
    else:
        print(json.dumps(counts), flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

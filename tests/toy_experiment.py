"""A toy experiment, as a contributor would add one: a function, a result type that
saves and loads, and one entry for the study's step table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tl_multilingual.causal.evaluate import text_nll
from tl_multilingual.persist import write_text
from tl_multilingual.study.steps import Step


@dataclass
class ToyEffect:
    """Mean token NLL per language of the evaluation texts."""

    frame: pd.DataFrame

    def save(self, path: str | Path) -> Path:
        folder = Path(path)
        write_text(folder / "cells.csv", self.frame.to_csv(index=False))
        write_text(folder / "result.json", json.dumps({"kind": "toy"}))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> ToyEffect:
        folder = Path(path)
        assert json.loads((folder / "result.json").read_text())["kind"] == "toy"
        return cls(pd.read_csv(folder / "cells.csv"))


def toy_effect(model, texts, *, batch_size: int = 8) -> ToyEffect:
    frame = text_nll(model, texts, batch_size=batch_size)
    grouped = frame.groupby("language", sort=False)[["nll", "tokens"]].sum().reset_index()
    grouped["mean_nll"] = grouped["nll"] / grouped["tokens"]
    grouped["perplexity"] = grouped["mean_nll"].map(math.exp)
    return ToyEffect(grouped[["language", "mean_nll", "perplexity"]])


STEP = Step(
    "toy", "mean token NLL of the evaluation texts", "toy", ToyEffect,
    run=lambda study, done: toy_effect(study.lm, study.evaluation,
                                       batch_size=study.settings.batch_size),
    depends=("statistics",), settings=("eval_texts", "held_out", "min_held_out", "seed"),
    tables=lambda result, settings: {"toy": result.frame},
)

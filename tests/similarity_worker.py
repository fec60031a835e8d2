"""Run in each of two gloo processes by test_similarity.py: representation similarity and
the Jacobian lens fit under torch.distributed against the same call in one process
(inside ``distributed.local()``), on the same tiny model.

Each rank raises AssertionError on a difference, so the spawning test fails with the
traceback.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
from dist_worker import FED, _count_rows, _fed, _same_everywhere, close_frames

import tl_multilingual as tlm
from tl_multilingual import distributed
from tl_multilingual.stages.lens import fit_jacobian_lens
from tl_multilingual.stages.similarity import representation_similarity

TEXTS = {
    "en": [
        "The cat sleeps on the warm mat.",
        "We walked to the market in the morning.",
        "Numbers: 12 plus 30 is 42.",
        "The market opens early.",
        "A warm morning.",
        "The cat and the mat.",
        "Twelve walked.",
    ],
    "fr": [
        "Le chat dort sur le tapis chaud.",
        "Nous avons marché au marché le matin.",
        "Douze plus trente.",
        "Le marché ouvre tôt.",
        "Un matin chaud.",
        "Le chat et le tapis.",
        "Douze ont marché.",
    ],
    "zh": [
        "猫在温暖的垫子上睡觉。",
        "我们早上走到市场。",
        "十二加三十等于四十二。",
        "市场很早开门。",
        "温暖的早上。",
        "猫和垫子。",
        "十二个人走了。",
    ],
}


def run(rank: int, world: int, port: int, results: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", TQDM_DISABLE="1"
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        _checks()
        if rank == 0:
            with open(results, "w") as handle:
                handle.write("ok")
    finally:
        dist.destroy_process_group()


def _single(fn):
    FED["rows"] = 0
    with distributed.local():
        result = fn()
    return result, FED["rows"]


def _checks() -> None:
    _count_rows()
    lm = tlm.adapt(tlm.models.tiny("llama", n_layers=3))
    corpus = tlm.Corpus.from_dict(TEXTS)
    assert distributed.active() and distributed.world_size() == 2
    warnings.simplefilter("ignore")  # 7 items: the few-items caution

    for pooling in ("mean", "last"):

        def similarity(p=pooling):
            return representation_similarity(lm, corpus, pooling=p, batch_size=2, n_shuffles=5)

        (got, fed), (one, fed_one) = _fed(similarity), _single(similarity)
        assert sum(fed) == fed_one and all(n > 0 for n in fed), (
            f"{pooling}: ranks fed {fed}, one process {fed_one}"
        )
        assert torch.equal(got.shuffles, one.shuffles)
        assert torch.allclose(got.values, one.values, rtol=0, atol=1e-5), pooling
        assert torch.allclose(got.null, one.null, rtol=0, atol=1e-5), pooling
        close_frames(got.to_frame(n_boot=100), one.to_frame(n_boot=100))
        _same_everywhere(got.values)

    def fit():
        return fit_jacobian_lens(lm, corpus.select(["en", "fr"]), skip_first_positions=2)

    lens, one_lens = fit(), _single(fit)[0]
    assert lens.n_prompts == one_lens.n_prompts == 14
    assert lens.metadata["tl_multilingual"] == one_lens.metadata["tl_multilingual"]
    for layer in one_lens.source_layers:
        assert torch.allclose(
            lens.jacobians[layer], one_lens.jacobians[layer], rtol=1e-5, atol=1e-6
        ), layer
    _same_everywhere(lens.jacobians[0])

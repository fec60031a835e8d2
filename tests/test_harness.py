"""lm-evaluation-harness tasks run through the library's scoring, with and without an
intervention: local task definitions (YAML over local JSON lines) on a tiny model."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from conftest import require

import tl_multilingual as tlm
from tl_multilingual.causal import evaluate
from tl_multilingual.errors import TLMultilingualError, TLMultilingualWarning

lm_eval = require("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

from tl_multilingual.causal.harness import TLMEvalLM  # noqa: E402

CHOICE_ITEMS = [
    {"question": "The cat sleeps on the", "choices": ["mat", "market", "morning"], "label": 0},
    {"question": "We walked to the", "choices": ["mat", "market", "cat"], "label": 1},
    {"question": "Le chat dort sur le", "choices": ["tapis", "matin", "marché"], "label": 0},
    {"question": "Die Katze schläft auf der", "choices": ["Matte", "Markt", "Morgen"], "label": 0},
    {"question": "Numbers: 12 plus 30 is", "choices": ["42", "12", "30"], "label": 0},
]
GENERATE_ITEMS = [
    {"question": "The cat sleeps on the", "answer": " warm mat"},
    {"question": "Nous avons marché au", "answer": " marché"},
    {"question": "Кошка спит на", "answer": " тёплом"},
]
TEXTS = [
    {"text": t}
    for t in (
        "The cat sleeps on the warm mat.",
        "Le chat dort sur le tapis chaud.",
        "猫在温暖的垫子上睡觉。",
    )
]

CHOICE_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
GENERATE_TASK = """task: tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 4
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
"""
ROLLING_TASK = """task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A TaskManager that knows only the three local tasks."""
    folder = tmp_path_factory.mktemp("tasks")
    for name, template, items in (
        ("choice", CHOICE_TASK, CHOICE_ITEMS),
        ("generate", GENERATE_TASK, GENERATE_ITEMS),
        ("rolling", ROLLING_TASK, TEXTS),
    ):
        data = folder / f"{name}.jsonl"
        data.write_text(
            "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8"
        )
        (folder / f"{name}.yaml").write_text(template.format(data=data), encoding="utf-8")
    return TaskManager(include_path=str(folder), include_defaults=False)


@pytest.fixture(scope="module")
def lm():
    return tlm.adapt(tlm.models.tiny("llama", n_layers=2))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run(lm, tasks, name, **kwargs):
    results = lm_eval.simple_evaluate(
        model=TLMEvalLM(lm, batch_size=2, **kwargs),
        tasks=[name],
        task_manager=tasks,
        bootstrap_iters=0,
        log_samples=True,
    )
    assert results["config"]["model_name"] == lm.name  # the harness records the model
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    return results["results"][name], samples


def choice_items():
    return {
        "en": [
            tlm.MultipleChoice(
                item["question"], tuple(" " + c for c in item["choices"]), item["label"]
            )
            for item in CHOICE_ITEMS
        ]
    }


def test_a_multiple_choice_task_gives_the_librarys_scores_with_and_without_an_ablation(lm, tasks):
    mask = tlm.NeuronMask.random([24] * lm.n_layers, lm.d_mlp, seed=1)
    measured = {}
    for edited in (False, True):
        if edited:
            with tlm.ablate(lm, mask):
                summary, samples = run(lm, tasks, "tiny_choice")
                own = evaluate.choice_scores(lm, choice_items())
        else:
            summary, samples = run(lm, tasks, "tiny_choice")
            own = evaluate.choice_scores(lm, choice_items())
        harness = [[resp[0][0] for resp in sample["resps"]] for sample in samples]
        for mine, theirs in zip(own["scores"], harness):
            assert theirs == pytest.approx(mine, abs=1e-5)  # float32: batches differ
        assert [bool(s["acc"]) for s in samples] == own["correct"].tolist()
        assert summary["acc,none"] == pytest.approx(own["correct"].mean())
        measured[edited] = harness
    # The edit was active inside the harness: the scores moved.
    assert (
        max(abs(a - b) for x, y in zip(measured[False], measured[True]) for a, b in zip(x, y))
        > 1e-3
    )


def test_log_likelihood_and_is_greedy_match_the_models_own_logits(lm):
    tokenizer = lm.tokenizer

    def ids(text):
        return [lm.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    def logits_of(tokens):
        with torch.no_grad():
            return lm.model(torch.tensor([tokens])).float()[0]

    # A continuation greedy decoding produces: the model's top next token, where its text
    # tokenises back to that token after the context.
    greedy_pairs = []
    for context in (
        "The cat sleeps on the",
        "We walked to the",
        "Le chat dort sur le",
        "Numbers: 12 plus",
    ):
        top = int(logits_of(ids(context))[-1].argmax())
        text = tokenizer.decode([top])
        if text and ids(context + text) == [*ids(context), top]:
            greedy_pairs.append((context, text))
    assert greedy_pairs
    pairs = [
        *greedy_pairs,
        ("The cat sleeps on the", " morning"),
        ("Le chat dort sur le", " tapis chaud"),
    ]
    answers = TLMEvalLM(lm).loglikelihood(pairs)
    for (logprob, greedy), (context, continuation) in zip(answers, pairs):
        prompt, joint = ids(context), ids(context + continuation)
        assert joint[: len(prompt)] == prompt
        logits = logits_of(joint)
        logp = torch.log_softmax(logits, -1)
        targets = range(len(prompt), len(joint))
        assert logprob == pytest.approx(
            sum(float(logp[t - 1, joint[t]]) for t in targets), abs=1e-4
        )
        assert greedy == all(int(logits[t - 1].argmax()) == joint[t] for t in targets)
    assert all(greedy for _, greedy in answers[: len(greedy_pairs)])
    assert not all(greedy for _, greedy in answers)


def test_a_generation_task_gives_the_librarys_generations(lm, tasks):
    mask = tlm.NeuronMask.random([24] * lm.n_layers, lm.d_mlp, seed=2)
    prompts = [item["question"] for item in GENERATE_ITEMS]
    with tlm.ablate(lm, mask):
        summary, samples = run(lm, tasks, "tiny_generate")
        own = evaluate.generate(lm, prompts, max_new_tokens=4, stop=["."])
    assert [s["resps"][0][0] for s in samples] == own
    exact = [text == item["answer"] for text, item in zip(own, GENERATE_ITEMS)]
    assert summary["exact_match,none"] == pytest.approx(sum(exact) / len(exact))
    assert own != evaluate.generate(
        lm, prompts, max_new_tokens=4, stop=["."]
    )  # the edit was active


def test_a_rolling_task_gives_the_librarys_perplexity_sums(lm, tasks):
    summary, samples = run(lm, tasks, "tiny_rolling")
    texts = [t["text"] for t in TEXTS]
    own = evaluate.text_nll(lm, tlm.Corpus.from_dict({"en": texts}))
    harness = [s["resps"][0][0] for s in samples]
    assert harness == pytest.approx((-own["nll"]).tolist(), abs=1e-5)
    words = sum(len(t.split()) for t in texts)
    assert summary["word_perplexity,none"] == pytest.approx(
        math.exp(-sum(harness) / words), rel=1e-6
    )


def test_sampling_and_a_shared_response_cache_are_refused_or_flagged(lm, tasks, tmp_path):
    harness = TLMEvalLM(lm)
    with pytest.raises(TLMultilingualError, match="decodes greedily"):
        harness.generate_until(
            [("The cat", {"until": ["."], "do_sample": True, "temperature": 0.7})]
        )
    with pytest.warns(TLMultilingualWarning, match="caches responses by request text only"):
        lm_eval.simple_evaluate(
            model=TLMEvalLM(lm),
            tasks=["tiny_choice"],
            task_manager=tasks,
            bootstrap_iters=0,
            use_cache=str(tmp_path / "cache"),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", TLMultilingualWarning)
        run(lm, tasks, "tiny_choice")  # no cache, no warning

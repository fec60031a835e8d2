"""The study report: tables (CSV), figures (PNG and PDF) and ``report.html``.

[`write_report()`][tl_multilingual.study.report.write_report] reads what a [`tl_multilingual.study.pipeline.Study`][tl_multilingual.study.pipeline.Study] saved in its
folder and writes ``tables/``, ``figures/`` and ``report.html`` beside it, with the
findings stated in numbers.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import SaveError
from ..neurons.classes import LanguageNeurons
from ..persist import read_json, write_text
from ..resample import MIN_UNITS
from ..stages.stage_map import STAGES, StageMap
from . import plot
from .steps import STEPS, settings_of

__all__ = ["write_report", "findings"]


def _load(folder: Path) -> dict[str, Any]:
    """The study's results by step ([`STEPS`][tl_multilingual.study.steps.STEPS]), its
    ``manifest`` and its ``settings``; those of steps not finished yet (not in the
    manifest) are None."""
    manifest = read_json(folder / "manifest.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("steps", {}), dict):
        raise SaveError(f"{folder / 'manifest.json'} is not the manifest of a study (it is corrupt)")
    out: dict[str, Any] = {"manifest": manifest}
    out["settings"] = settings_of(out["manifest"].get("settings"))
    done = out["manifest"].get("steps", {})
    for step in STEPS.values():
        path = folder / step.path
        out[step.name] = step.load_result(path) if step.name in done and path.exists() else None
    return out


def _neurons(results: dict[str, Any]) -> LanguageNeurons | None:
    """The neurons the study's later steps used (those of ``settings.method``)."""
    found = results.get("neurons")
    if found is None:
        return None
    return found.get(results.get("settings", settings_of(None)).method)


def _quarters(per_layer: np.ndarray) -> tuple[float, float, float]:
    """Means of the first quarter of the layers, the middle half and the last quarter
    (NaN for a part with no layer: a model of fewer than three layers has no middle)."""
    n = len(per_layer)
    q = max(n // 4, 1)
    parts = (per_layer[:q], per_layer[q : n - q], per_layer[n - q :])
    return tuple(float(part.mean()) if len(part) else float("nan") for part in parts)  # type: ignore[return-value]


def findings(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a study, as plain data (those of the finished steps)."""
    facts: dict[str, Any] = {}
    if _neurons(results) is not None:
        facts.update(_neuron_facts(_neurons(results)))
    if results.get("stages") is not None:
        facts.update(_stage_facts(results["stages"]))
    if results.get("deactivation") is not None:
        facts["deactivation"] = _deactivation_facts(results)
        variants = list(dict.fromkeys(results["deactivation"].frame["variant"]))
        same = _same_variants(_neurons(results), variants)
        if same:
            facts["same_variants"] = same
    if results.get("stage_effects") is not None:
        effects = results["stage_effects"]
        facts["stage_effects"] = {
            "variant": effects.variant,
            "carriers": effects.carriers(),
            "finding": effects.finding(),
            "stage_map": effects.stage_map,
            "over_control": effects.matrix("over_control").round(6).to_dict(),
        }
    skipped = results.get("manifest", {}).get("skipped") or {}
    if skipped:
        facts["skipped"] = dict(skipped)
    if results.get("sharing") is not None:
        profile = results["sharing"].layer_profile().groupby("class")["percent"].mean()
        stable = results["sharing"].stability().query("`class` == 'any'")["percent"].mean()
        facts["sharing"] = {"percent": profile.round(2).to_dict(), "stable_percent": float(stable)}
    return facts


def _neuron_facts(neurons: LanguageNeurons) -> dict[str, Any]:
    summary = neurons.summary().set_index("language")
    language_per_layer = neurons.membership.any(-1).sum(1).numpy().astype(float)
    first, middle, last = _quarters(language_per_layer)
    return {
        "lambda": neurons.lam,
        "selected": neurons.selected().count(),
        "specific": neurons.specific().count(),
        "related": neurons.related().count(),
        "general": neurons.general().count(),
        "dropped": neurons.dropped,
        "lambda_at_bound": (neurons.params.get("lam_search") or {}).get("at_bound"),
        "lambda_identified": neurons.lambda_identified(),
        "lambda_sensitivity": _sensitivity_ranges(neurons),
        "specific_per_language": summary["specific"].to_dict(),
        "languages_without_specific": [lang for lang, n in summary["specific"].items() if n == 0],
        "language_neurons_by_quarter": {"first": first, "middle": middle, "last": last},
    }


def _sensitivity_ranges(neurons: LanguageNeurons) -> dict[str, Any] | None:
    """Over the lambda grid, the fewest and most neurons of each class (None when lambda
    was identified or given)."""
    grid = neurons.lambda_sensitivity()
    if grid.empty:
        return None
    spans = grid.groupby("class")["count"].agg(["min", "max"])
    return {"lambdas": sorted(set(grid["lambda"])),
            "counts": {c: [int(spans.loc[c, "min"]), int(spans.loc[c, "max"])]
                       for c in spans.index}}


def _same_variants(neurons: LanguageNeurons | None, variants: list[str]) -> dict[str, str]:
    """Variants that select exactly the neurons of an earlier one (e.g. ``specific+related``
    when no neuron is related), mapped to that earlier variant."""
    if neurons is None:
        return {}
    from ..experiments.deactivation import variant_mask

    same: dict[str, str] = {}
    for k, variant in enumerate(variants):
        for earlier in variants[:k]:
            if earlier in same:
                continue
            if all(variant_mask(neurons, variant, lang) == variant_mask(neurons, earlier, lang)
                   for lang in neurons.languages):
                same[variant] = earlier
                break
    return same


def _stage_facts(stages: StageMap) -> dict[str, Any]:
    return {
        "stages": {s: [stages.layers(s).start, stages.layers(s).stop - 1] for s in STAGES},
        "stage_map": stages.label(),
        "stage_verdict": stages.verdict.to_dict(),
        "stage_choice": stages.choice,
        "stage_stability": stages.stability,
        "stage_maps": {name: {"stages": {s: [fit.layers(s).start, fit.layers(s).stop - 1] for s in STAGES},
                              "unconstrained": {s: [fit.layers(s, unconstrained=True).start,
                                                    fit.layers(s, unconstrained=True).stop - 1] for s in STAGES},
                              "signatures_met": fit.constrained,
                              "choice": fit.choice, "choice_reason": fit.choice_reason,
                              "quality": fit.quality.to_dict() if fit.quality is not None else None,
                              "stability": fit.stability}
                       for name, fit in stages.by_signal.items()},
        "stage_agreement": stages.agreement.to_dict("records") if stages.agreement is not None else None,
        "stage_warnings": list(stages.warnings),
    }


def _deactivation_facts(results: dict[str, Any]) -> dict[str, Any]:
    frame = results["deactivation"].frame
    variant = "specific+related" if "specific+related" in set(frame["variant"]) else frame["variant"].iloc[0]
    part = frame[frame["variant"] == variant]
    own, wins = {}, []
    for lang, rows in part.groupby("ablated", sort=False):
        self_change = float(rows[rows["evaluated"] == lang]["relative_change"].iloc[0])
        others = float(rows[rows["evaluated"] != lang]["relative_change"].median())
        control = rows[rows["evaluated"] == lang]["control_change"].iloc[0] / rows[rows["evaluated"] == lang]["baseline"].iloc[0]
        own[lang] = {"own": self_change, "others_median": others, "control": float(control)}
        wins.append(_hurt_most(self_change, others))
    texts = _texts_per_language(results)
    return {
        "variant": variant,
        "per_language": own,
        "own_above_others_median": int(sum(wins)),
        "languages": len(wins),
        "own_above_control": int(sum(v["own"] > 0 and v["own"] > v["control"]
                                     for v in own.values() if not np.isnan(v["control"]))),
        "texts_per_language": texts,
        "few_texts": texts is not None and texts < MIN_UNITS,
    }


def _hurt_most(own: float, others_median: float) -> bool:
    """A language is hurt most by its own neurons when its own perplexity rose (> 0)
    and rose more than the median of the other languages'."""
    return bool(own > 0 and own > others_median)


def _texts_per_language(results: dict[str, Any]) -> int | None:
    """Evaluation texts per language behind the deactivation intervals (the fewest)."""
    held = results["manifest"].get("data", {}).get("held_out_texts")
    setting = results["manifest"].get("settings", {}).get("eval_texts")
    if not held or setting is None:
        return None
    return int(min(min(held.values()), setting))


def _tables(results: dict[str, Any], folder: Path) -> dict[str, pd.DataFrame]:
    """Every table the finished steps declare ([`Step.tables`][tl_multilingual.study.steps.Step]), written as CSV."""
    settings = results.get("settings", settings_of(None))
    tables: dict[str, pd.DataFrame] = {}
    for step in STEPS.values():
        if results.get(step.name) is not None and step.tables is not None:
            tables.update(step.tables(results[step.name], settings))
    for name, table in tables.items():
        write_text(folder / "tables" / f"{name}.csv", table.to_csv(index=False))
    return tables


def _figures(results: dict[str, Any], folder: Path) -> dict[str, str]:
    figures = {}
    stages = results.get("stages")
    neurons = _neurons(results)

    def keep(name: str, fig: Any, caption: str) -> None:
        plot.save(fig, folder / "figures" / name)
        figures[name] = caption

    shading = _shading(stages)
    if neurons is not None:
        keep("neuron_classes", plot.neuron_classes(neurons, stages=stages),
             "Language-specific and language-related neurons per layer (bars, left scale) and general neurons "
             "(line, right scale) (Zhang et al.'s (AAAI-26) ternary classes)" + shading)
        keep("neurons_per_language", plot.language_counts(neurons),
             "Specific and related neurons of each language.")
    deactivation = results.get("deactivation")
    variants = (list(dict.fromkeys(deactivation.frame["variant"])) if deactivation is not None
                else [])
    same = _same_variants(neurons, variants)
    for variant in variants:
        if variant in same:
            continue
        twins = [v for v, earlier in same.items() if earlier == variant]
        keep(f"deactivation_{variant.replace('+', '_')}", plot.deactivation_heatmap(deactivation, variant),
             f"Change in perplexity of each evaluated language when the '{variant}' neurons of one "
             "language are deactivated (Zhang et al. (AAAI-26) Fig. 2); colour: log of the perplexity ratio."
             + (f" The variant{'s' if len(twins) > 1 else ''} "
                f"{', '.join(repr(t) for t in twins)} select"
                f"{'' if len(twins) > 1 else 's'} exactly these neurons, so "
                f"{'their' if len(twins) > 1 else 'its'} figure would be the same."
                if twins else ""))
    lens = results.get("tables", {}).get("lens")  # the lens step's summary, drawn as written
    if lens is not None:
        keep("lens", plot.lens_curves(lens, stages=stages),
             "Logit lens: probability of the answer in the target language and in English per layer "
             "(mean and 95% bootstrap band over prompts)" + shading)
    if results.get("stage_effects") is not None:
        keep("stage_effects", plot.stage_effects_heatmap(results["stage_effects"]),
             f"Deactivating each language's '{results['stage_effects'].variant}' neurons inside one stage only: "
             "relative change of that language's own perplexity minus the change under random neurons of the "
             "same number per layer; * marks cells whose change exceeds both the controls and the other "
             "languages (paired bootstrap intervals above zero); n/m: not measured (no neurons of the "
             "language in the stage)." + _used(results["stage_effects"].stage_map))
    if results.get("sharing") is not None:
        keep("sharing_profile", plot.sharing_profile(results["sharing"]),
             "Neurons per sharing class and layer on held-out parallel sentences (Wang et al., 2024).")
    return figures


def _used(label: str) -> str:
    """The caption's sentence naming the stage map a result used (empty when unknown)."""
    return f" Stages: the {label}." if label else ""


def _shading(stages: StageMap | None) -> str:
    """What a figure's caption says about the stages drawn on it (by the map's verdict)."""
    if stages is None:
        return "."
    numbered = ("numbered 1-4 (understanding, shared reasoning, output transformation, vocabulary "
                "output)")
    if stages.verdict.level == "not supported":
        return (f"; no stages are shaded: the data do not support the {stages.label()}.")
    if stages.verdict.level == "weak":
        return f"; the stages hatched, as weak, and {numbered}: the {stages.label()}."
    return f"; the stages shaded and {numbered}: the {stages.label()}."


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; font-size: .85em; margin: 1em 0; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f5f5f5; } code { background: #f5f5f5; padding: 0 .2em; }
.facts li { margin: .3em 0; }
"""

_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-figures", broken.length ? "broken:" + broken.length : "loaded:" + images.length);
});
</script>"""


def _e(value: Any) -> str:
    """Any value, as HTML-escaped text: everything written into the report goes through it."""
    return html.escape(str(value))


def _seconds(step: Any) -> str:
    seconds = step.get("seconds", 0) if isinstance(step, dict) else None
    return f"{seconds:.1f}" if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else "?"


def _figure_html(name: str, caption: str) -> str:
    return (f'<figure><img src="figures/{_e(name)}.png" alt="{_e(caption)}">'
            f'<figcaption>{_e(caption)} <a href="figures/{_e(name)}.pdf">PDF</a></figcaption></figure>')


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.3g}", border=0)


def _stages_html(stage_map: StageMap) -> list[str]:
    """Each signal's map, the agreement, the fit quality and the cautions."""
    out = [
        f"<p><strong>The map used:</strong> the {_e(stage_map.label())}. "
        + (f"{_e(stage_map.fit.choice_reason[0].upper() + stage_map.fit.choice_reason[1:])}.</p>"
           if stage_map.fit is not None and stage_map.fit.choice_reason else "</p>"),
        "<p>Each signal is fitted alone (neuron classes, logit lens) and together (combined, the map used "
        "above). Each map is the signature-constrained fit unless the data reject it (a fit no "
        "better than chance, a stage only the signatures make, or one explaining less than three "
        "stages); the other fit stays in the table. <em>Verdict</em>: supported, weak or not supported, with the reasons. "
        "<em>Explained</em>: share of the features' variation across layers the four stages explain; "
        "<em>p</em>: against the best four-stage fit to layer-shuffled features; <em>4 vs 3</em>, <em>4 vs 2</em>: "
        "p-values that four stages explain more than three (Wendler et al.'s phases) or two. <em>Stability</em>: "
        "share of bootstrap refits that put a boundary at the same layer; it measures reproducibility, not "
        "support in the data.</p>",
    ]
    summary = stage_map.summary()
    if not summary.empty:
        columns = {"map": "map", "stages": "stages", "verdict": "verdict", "choice": "fit",
                   "unconstrained": "best fit without the signatures",
                   "constrained_fit": "best fit with the signatures", "signatures_met": "signatures met", "explained": "explained", "p_value": "p",
                   "four_beat_three_p": "4 vs 3", "four_beat_two_p": "4 vs 2"}
        table = summary[[c for c in columns if c in summary.columns]].rename(columns=columns)
        stability = summary.filter(like="stability")
        table["stability"] = [" / ".join("-" if pd.isna(v) else f"{v:.2f}" for v in row)
                              for row in stability.itertuples(index=False)]
        out.append(_table_html(table))
    if stage_map.agreement is not None:
        out.append("<p>Where each signal puts each boundary (layer where the next stage begins):</p>")
        out.append(_table_html(stage_map.agreement))
    if stage_map.warnings:
        out.append("<p><strong>Cautions about the stage map:</strong></p><ul class='warnings'>"
                   + "".join(f"<li>{html.escape(w)}</li>" for w in stage_map.warnings) + "</ul>")
    else:
        out.append("<p>No cautions: every signature holds, the fit beats chance and the signals agree.</p>")
    return out


def _lambda_sentence(facts: dict[str, Any]) -> str:
    """What the report says about lambda: identified, at a bound, or not identified by the
    data with the range of each class over the grid of lambdas."""
    if facts.get("lambda_identified") is False:
        grid = facts.get("lambda_sensitivity") or {}
        spans = "; ".join(f"{c} {lo}-{hi}" if lo != hi else f"{c} {lo}"
                          for c, (lo, hi) in (grid.get("counts") or {}).items()
                          if c in ("specific", "related", "general", "dropped"))
        lambdas = ", ".join(f"{x:g}" for x in grid.get("lambdas", []))
        return (" The data do not identify lambda: at no lambda does a selected neuron reach every "
                "language, so Zhang et al.'s (AAAI-26) criterion never binds; lambda = "
                f"{facts['lambda']:g} by the default rule (the upper bound of the search range). Over "
                f"lambda = {lambdas} the classes range {spans} (tables/lambda_sensitivity.csv): a "
                "conclusion that depends on these counts depends on lambda.")
    if facts.get("lambda_at_bound"):
        return (f" The lambda search ended at the {facts['lambda_at_bound']} bound of its range: "
                "the lambda lies outside it (see lam_range).")
    return ""


def _finding_lines(facts: dict[str, Any]) -> list[str]:
    """The findings as sentences (those of the finished steps)."""
    lines = []
    if "lambda" in facts:
        q = facts["language_neurons_by_quarter"]
        lines += [
            f"Ternary identification (lambda = {facts['lambda']:g}) selected {facts['selected']} neurons: "
            f"{facts['specific']} language-specific and {facts['related']} language-related; "
            f"{facts['general']} neurons are general (active above the bar in every language)."
            + (f" {facts['dropped']} of the selected neurons ({100 * facts['dropped'] / facts['selected']:.0f}%) "
               "are above the bar in no language and were dropped." if facts.get("dropped") else "")
            + _lambda_sentence(facts),
            "Every language has specific neurons." if not facts["languages_without_specific"] else
            f"Languages without specific neurons: {', '.join(facts['languages_without_specific'])}.",
            f"Language neurons per layer: {q['first']:.1f} in the first quarter of the layers, {q['middle']:.1f} "
            f"in the middle half and {q['last']:.1f} in the last quarter.",
        ]
    if "stages" in facts:
        verdict = facts.get("stage_verdict") or {"level": "given", "reasons": []}
        label = facts.get("stage_map") or ", ".join(
            f"{s.replace('_', ' ')} {a}-{b}" for s, (a, b) in facts["stages"].items())
        lines.append(
            f"Stages: the {label}."
            + (" No experiment or figure uses these stages."
               if verdict["level"] == "not supported" else "")
            + (f" {len(facts['stage_warnings'])} cautions about this map are listed below."
               if facts.get("stage_warnings") else "")
        )
    for variant, earlier in (facts.get("same_variants") or {}).items():
        lines.append(f"The '{variant}' neurons are exactly the '{earlier}' neurons (no neuron of "
                     "the other classes it adds was found), so their deactivation results are the "
                     "same and one heatmap shows both.")
    if "deactivation" in facts:
        d = facts["deactivation"]
        lines.append(
            f"Deactivating a language's '{d['variant']}' neurons raised its own perplexity, and more than the "
            f"median of the other languages', for {d['own_above_others_median']} of {d['languages']} languages"
            + (f"; it rose, and more than under random neurons of the same number per layer, for "
               f"{d['own_above_control']}." if d["own_above_control"] else ".")
            + (f" These intervals rest on {d['texts_per_language']} texts per language, fewer than "
               f"{MIN_UNITS}: read them with caution." if d.get("few_texts") else "")
        )
    if "stage_effects" in facts:
        lines.append(facts["stage_effects"]["finding"])
    for step, reason in (facts.get("skipped") or {}).items():
        lines.append(f"The step '{step}' was skipped: {reason}.")
    if "sharing" in facts:
        pct = facts["sharing"]["percent"]
        lines.append(
            f"On held-out parallel sentences, {pct.get('all_shared', 0):.1f}% of neurons are all-shared, "
            f"{pct.get('partial_shared', 0):.1f}% partial-shared, {pct.get('specific', 0):.1f}% specific and "
            f"{pct.get('non_activated', 0):.1f}% non-activated on average; "
            f"{facts['sharing']['stable_percent']:.1f}% keep the same class on every item."
        )
    return lines


def write_report(folder: str | Path) -> Path:
    """Write ``tables/``, ``figures/`` and ``report.html`` for the study in ``folder``:
    the results of the steps finished so far (a study rewrites it after each step)."""
    folder = Path(folder)
    results = _load(folder)
    results["tables"] = tables = _tables(results, folder)
    figures = _figures(results, folder)
    facts = findings(results)
    write_text(folder / "tables" / "findings.json", json.dumps(facts, indent=2, default=float))
    manifest = results["manifest"]
    model, data = manifest["model"], manifest["data"]
    lines = _finding_lines(facts)
    timings = "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(_seconds(v))}</td></tr>" for k, v in manifest.get("steps", {}).items()
    )
    versions = manifest.get("versions", {})
    languages = [str(lang) for lang in data.get("languages", [])]
    command = manifest.get("command", [])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Language neurons of {_e(model.get('name', 'a model'))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Language neurons of {_e(model.get('name', 'a model'))}</h1>",
        f"<p>{_e(model.get('architecture', ''))}, {_e(model.get('n_layers'))} layers, {_e(model.get('d_mlp'))} "
        f"neurons per MLP; {len(languages)} languages ({_e(', '.join(languages))}); "
        f"tl_multilingual {_e(versions.get('tl_multilingual', ''))}, TransformerLens "
        f"{_e(versions.get('transformer_lens', ''))}.</p>",
        "<h2>Findings</h2><ul class='facts'>" + "".join(f"<li>{_e(x)}</li>" for x in lines) + "</ul>",
    ]
    steps = manifest.get("steps", {})
    pending = [step.name for step in STEPS.values() if step.required and step.name not in steps]
    if pending:
        parts.append(f"<p class='pending'>In progress: {_e(', '.join(pending))} not finished yet; "
                     "this page is rewritten after each step.</p>")
    if "neuron_classes" in figures:
        parts += [
            "<h2>Language neurons</h2>",
            _figure_html("neuron_classes", figures["neuron_classes"]),
            _figure_html("neurons_per_language", figures["neurons_per_language"]),
            _table_html(tables["neurons_per_language"]),
        ]
    if results.get("stages") is not None:
        parts += ["<h2>Stages of multilingual inference</h2>", *_stages_html(results["stages"])]
    if "lens" in figures:
        parts.append(_figure_html("lens", figures["lens"]))
    if "stage_effects" in figures:
        parts += ["<h3>Causal evidence per stage</h3>", _figure_html("stage_effects", figures["stage_effects"]),
                  f"<p>{html.escape(facts['stage_effects']['finding'])}</p>"]
    if results.get("deactivation") is not None:
        parts.append("<h2>Deactivation</h2>")
    parts += [_figure_html(name, caption) for name, caption in figures.items() if name.startswith("deactivation_")]
    if "sharing_profile" in figures:
        parts += ["<h2>Neuron sharing across languages</h2>", _figure_html("sharing_profile", figures["sharing_profile"])]
    parts += [
        "<h2>Reproducibility</h2>",
        f"<p>Data fingerprint <code>{_e(str(data.get('fingerprint', ''))[:16])}</code>; command "
        f"<code>{_e(' '.join(map(str, command)) if isinstance(command, list) else command)}</code>; full record in "
        "<a href='manifest.json'>manifest.json</a>; tables in <code>tables/</code>.</p>",
        f"<table><tr><th>step</th><th>seconds</th></tr>{timings}</table>",
        _CHECK, "</body></html>",
    ]
    return write_text(folder / "report.html", "\n".join(parts))

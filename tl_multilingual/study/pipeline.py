"""The full language-neuron study of one model, step by step, resumable.

Steps: activation statistics -> LAPE and ternary neurons -> logit lens -> stage map ->
deactivation matrix on held-out texts -> deactivation inside each stage (causal
evidence per stage) -> sharing profile on parallel items -> report. The stage map is
passed to the steps that use it; nothing is attached to the model.
Each step saves its result in the study folder and records, in ``manifest.json``, a
key made of its parameters and the keys of what it depends on; a step whose result
exists under the same key is loaded, not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import distributed
from ..errors import CorpusError, TLMultilingualError, warn
from ..experiments.deactivation import DeactivationResult, deactivation_matrix
from ..experiments.stage_deactivation import StageEffects, stage_effects
from ..inputs.corpus import Corpus
from ..inputs.items import ParallelItem, ParallelItems
from ..inputs.prompts import translation
from ..model.adapters import ModelAdapter, adapt
from ..neurons.classes import LanguageNeurons
from ..neurons.collect import collect_stats
from ..neurons.identification import identify
from ..neurons.sharing_classes import Sharing, sharing
from ..neurons.stats import ActivationStats
from ..persist import is_temporary, library_versions, write_text
from ..stages.lens import LensResult, language_lens
from ..stages.segmentation import StageMap, map_stages

__all__ = ["StudySettings", "Study", "DEMO_SETTINGS"]

T = TypeVar("T")
STEPS = ("statistics", "neurons", "lens", "stages", "deactivation", "stage_effects", "sharing", "report")


@dataclass
class StudySettings:
    """What a study computes, and how much of the data it uses."""

    batch_size: int = 8
    max_tokens_per_language: int | None = None
    held_out: float | int = 0.2  # fraction (or count) of each language held out of the statistics
    min_held_out: int = 5  # texts held out at least, whatever the fraction
    min_train_texts: int = 5  # texts left for the statistics at least
    eval_texts: int = 10
    variants: tuple[str, ...] = ("specific", "specific+related", "specific+related+general")
    controls: int = 3
    control_variant: str | None = None  # controls for this variant only (None: for every one)
    top_rate: float = 0.01
    lens_pairs: int = 3
    lens_words: int = 40
    sharing_items: int = 30
    stage_variant: str = "specific"  # neurons deactivated inside each stage
    stage_words: int = 10  # lens prompts per language for the stage effects
    n_boot: int = 200
    seed: int = 0


# About ten minutes for Gemma-3-270m on two CPU cores.
DEMO_SETTINGS = StudySettings(
    batch_size=16, max_tokens_per_language=None, held_out=30, eval_texts=4, controls=1,
    control_variant="specific+related", lens_pairs=2, lens_words=30, sharing_items=20, n_boot=100,
)


_LENS_PAIRS = [("fr", "zh"), ("de", "ru"), ("es", "ja"), ("ru", "fr"), ("zh", "de")]


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Study:
    """One study of one model on one corpus, in the folder ``out``."""

    out: Path
    model: Any
    corpus: Corpus
    settings: StudySettings = field(default_factory=StudySettings)
    words: list[dict[str, str]] | None = None
    model_record: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    quiet: bool = False
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.lm: ModelAdapter = adapt(self.model)
        count = check_study(self.corpus, self.settings)
        self.train, self.held = self.corpus.split(count, seed=self.settings.seed)
        check_texts(self.lm, self.train, self.held.head(self.settings.eval_texts))
        try:
            self.prompts = self._lens_prompts()
        except (TLMultilingualError, KeyError, TypeError, AttributeError) as err:
            raise CorpusError(f"the word list cannot make lens prompts: {err}") from err
        self.manifest_path = self.out / "manifest.json"
        self.manifest = self._read_manifest()
        self.keys: dict[str, str] = {}

    # -- bookkeeping ----------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any]:
        manifest = _read_study_manifest(self.manifest_path)
        if manifest is _CORRUPT:
            warn(
                f"{self.manifest_path} is corrupt: the results saved in {self.out} cannot be matched to "
                "their settings, so every step will be recomputed and the file rewritten"
            )
            return {}
        return manifest or {}

    def _write_manifest(self) -> None:
        if not distributed.is_main():  # under torch.distributed only rank 0 writes
            return
        facts = self.lm.describe()
        self.manifest.update(
            {
                "kind": "tl_multilingual.Study",
                "command": self.command,
                "model": {**facts, **self.model_record},
                "data": {
                    "languages": list(self.corpus.languages),
                    "fingerprint": self.corpus.fingerprint(),
                    "texts": {lang: len(self.corpus[lang]) for lang in self.corpus.languages},
                    "train_texts": {lang: len(self.train[lang]) for lang in self.train.languages},
                    "held_out_texts": {lang: len(self.held[lang]) for lang in self.held.languages},
                },
                "settings": asdict(self.settings),
                "versions": library_versions(),
            }
        )
        write_text(self.manifest_path, json.dumps(self.manifest, indent=2, default=str))

    def _say(self, message: str) -> None:
        if not distributed.is_main():
            return
        if self.log is not None:
            self.log(message)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def _step(
        self, name: str, params: dict[str, Any], depends: tuple[str, ...],
        compute: Callable[[], T], save: Callable[[T, Path], Any], load: Callable[[Path], T], path: Path,
    ) -> T:
        key = _key({"params": params, "depends": [self.keys[d] for d in depends], "model": self.model_key,
                    "data": self.corpus.fingerprint()})
        self.keys[name] = key
        steps = self.manifest.setdefault("steps", {})
        number = STEPS.index(name) + 1
        # Rank 0 decides, loads and writes; every rank computes its share (see distributed).
        if distributed.broadcast(steps.get(name, {}).get("key") == key and path.exists()):
            self._say(f"[{number}/{len(STEPS)}] {name}: up to date, reusing {path.relative_to(self.out)}")
            return distributed.on_main(lambda: load(path))
        self._say(f"[{number}/{len(STEPS)}] {name} ...")
        start = time.perf_counter()
        result = compute()

        def record() -> float:
            save(result, path)
            seconds = time.perf_counter() - start
            steps[name] = {"key": key, "seconds": round(seconds, 2), "params": params,
                           "output": str(path.relative_to(self.out))}
            self._write_manifest()
            return seconds

        seconds = distributed.on_main(record)
        self._say(f"[{number}/{len(STEPS)}] {name} done in {seconds:.1f} s")
        self._partial_report()
        return result

    def _partial_report(self) -> None:
        """Rewrite ``report.html`` with the steps finished so far (the reader sees findings
        as they arrive); the final report is written by the last step."""
        from .report import write_report

        write_report(self.out)

    @property
    def model_key(self) -> str:
        return _key({**self.lm.describe(), **self.model_record})

    # -- the steps ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run (or resume) every step; returns the manifest."""
        s, progress = self.settings, not self.quiet
        distributed.on_main(self._prepare_folder)
        stats = self._step(
            "statistics", {"max_tokens_per_language": s.max_tokens_per_language, "held_out": s.held_out,
                           "seed": s.seed}, (),
            lambda: collect_stats(self.lm, self.train, batch_size=s.batch_size,
                                  max_tokens_per_language=s.max_tokens_per_language, progress=progress),
            lambda r, p: r.save(p), ActivationStats.load, self.out / "statistics",
        )
        neurons = self._step(
            "neurons", {"top_rate": s.top_rate}, ("statistics",),
            lambda: {"ternary": identify(stats, method="ternary", top_rate=s.top_rate),
                     "lape": identify(stats, method="lape", top_rate=s.top_rate)},
            lambda r, p: [r[m].save(p / m) for m in r],
            lambda p: {m: LanguageNeurons.load(p / m) for m in ("ternary", "lape")}, self.out / "neurons",
        )
        prompts = self.prompts
        lens = None
        if prompts:
            lens = self._step(
                "lens", {"prompts": _key([(p.text, p.answers) for p in prompts])}, (),
                lambda: language_lens(self.lm, prompts, batch_size=s.batch_size, progress=progress),
                lambda r, p: r.save(p), LensResult.load, self.out / "lens",
            )
        else:
            self._say("lens: skipped (no word list covers two non-English languages of the corpus)")
        stages = self._step(
            "stages", {"n_boot": s.n_boot, "seed": s.seed, "lens": lens is not None},
            ("neurons", *(("lens",) if lens is not None else ())),
            lambda: map_stages(neurons["ternary"], lens, stats=stats, n_boot=s.n_boot, seed=s.seed),
            lambda r, p: r.save(p), StageMap.load, self.out / "stages.json",
        )
        for sentence in stages.warnings:
            self._say(f"stages: {sentence}")
        evaluation = self.held.head(s.eval_texts)
        self._step(
            "deactivation", {"variants": list(s.variants), "controls": s.controls, "eval_texts": s.eval_texts,
                             "control_variant": s.control_variant, "n_boot": s.n_boot}, ("neurons",),
            lambda: self._deactivation(neurons["ternary"], evaluation, progress),
            lambda r, p: r.save(p), DeactivationResult.load, self.out / "deactivation",
        )
        stage_prompts = self._stage_prompts()
        self._step(
            "stage_effects", {"variant": s.stage_variant, "controls": s.controls, "eval_texts": s.eval_texts,
                              "n_boot": s.n_boot, "seed": s.seed,
                              "prompts": _key([(p.text, p.answers) for p in stage_prompts])},
            ("neurons", "stages"),
            lambda: stage_effects(self.lm, neurons["ternary"], stages, evaluation, lens_prompts=stage_prompts,
                                  variant=s.stage_variant, controls=s.controls, seed=s.seed, n_boot=s.n_boot,
                                  batch_size=s.batch_size, progress=progress),
            lambda r, p: r.save(p), StageEffects.load, self.out / "stage_effects",
        )
        items = self._sharing_items()
        if items is not None:
            self._step(
                "sharing", {"items": _key([(i.id, i.texts) for i in items])}, (),
                lambda: sharing(self.lm, items, batch_size=s.batch_size, progress=progress),
                lambda r, p: r.save(p), Sharing.load, self.out / "sharing",
            )
        else:
            self._say("sharing: skipped (the corpus is not parallel)")
        distributed.on_main(self._report)
        return self.manifest

    def _prepare_folder(self) -> None:
        """Create the folder, and remove what a save stopped midway left behind (the
        hidden staging copies of atomic writes)."""
        check_output_folder(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self.out.rglob(".*.tmp-*"), reverse=True):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self._write_manifest()

    def _report(self) -> None:
        from .report import write_report

        start = time.perf_counter()
        self._say(f"[{len(STEPS)}/{len(STEPS)}] report ...")
        write_report(self.out)
        self.manifest.setdefault("steps", {})["report"] = {"seconds": round(time.perf_counter() - start, 2),
                                                           "output": "report.html"}
        self._write_manifest()
        self._say(f"report: {self.out / 'report.html'}")

    def _deactivation(self, neurons: LanguageNeurons, evaluation: Corpus, progress: bool) -> DeactivationResult:
        s = self.settings
        controls = s.controls if s.control_variant is None else {s.control_variant: s.controls}
        return deactivation_matrix(self.lm, neurons, evaluation, classes=list(s.variants), controls=controls,
                               seed=s.seed, n_boot=s.n_boot, batch_size=s.batch_size, progress=progress)

    def _lens_prompts(self) -> list:
        """Wendler et al.'s translation prompts between non-English languages (French to
        Chinese first, as in the paper), tracking English."""
        if not self.words:
            return []
        langs = [lang for lang in self.corpus.languages if lang != "en" and all(lang in w for w in self.words)]
        if len(langs) < 2 or not all("en" in w for w in self.words):
            return []
        words = self.words[: self.settings.lens_words]
        preferred = [p for p in _LENS_PAIRS if p[0] in langs and p[1] in langs]
        generic = [(langs[(i + 1) % len(langs)], langs[i]) for i in range(len(langs))]
        pairs = list(dict.fromkeys(preferred + generic))[: self.settings.lens_pairs]
        prompts = []
        for src, tgt in pairs:
            prompts += translation(words, src=src, tgt=tgt, shots=3, seed=self.settings.seed)
        return prompts

    def _stage_prompts(self) -> list:
        """Translation prompts into every language the word list covers (from the next
        such language), so each language's neurons have answers of their own to read."""
        if not self.words:
            return []
        langs = [lang for lang in self.corpus.languages if all(lang in w for w in self.words)]
        if len(langs) < 2:
            return []
        words = self.words[: self.settings.stage_words]
        prompts = []
        for i, tgt in enumerate(langs):
            src = langs[(i + 1) % len(langs)]
            prompts += translation(words, src=src, tgt=tgt, shots=3, seed=self.settings.seed, track=())
        return prompts

    def _sharing_items(self) -> ParallelItems | None:
        held = self.held
        if not held.is_parallel:
            return None
        n = min(self.settings.sharing_items, len(held[held.languages[0]]))
        items = [ParallelItem(f"held-{i}", {lang: held[lang][i].text for lang in held.languages}) for i in range(n)]
        try:
            return ParallelItems(items, languages=held.languages)
        except CorpusError:
            return None


def held_out_count(corpus: Corpus, settings: StudySettings) -> int:
    """Texts held out of every language: ``settings.held_out`` of the smallest language
    (a fraction, or a count), and at least ``settings.min_held_out``."""
    smallest = min(len(corpus[lang]) for lang in corpus.languages)
    held = settings.held_out
    if isinstance(held, float):
        return max(settings.min_held_out, round(smallest * held))
    return int(held)


_PYTHON_NAMES = {"languages": "Corpus.select", "held_out": "StudySettings.held_out",
                 "eval_texts": "StudySettings.eval_texts", "batch_size": "StudySettings.batch_size",
                 "controls": "StudySettings.controls"}


def check_study(corpus: Corpus, settings: StudySettings, *, names: dict[str, str] | None = None) -> int:
    """Check what a study needs before its first step; returns the held-out count.

    Args:
        corpus: the study's corpus.
        settings: its settings.
        names: how to name the settings in messages (the command passes its flags);
            default: the Python names.

    Raises:
        CorpusError: fewer than two languages, a language with only empty texts, a
            language too small to hold texts out and keep some for statistics, or
            settings out of range.
        LanguageError: a language key that is not a known language (a corpus built with
            ``allow_unknown=True``): the sharing and lens steps need real languages.
    """
    from ..errors import LanguageError

    name = {**_PYTHON_NAMES, **(names or {})}
    if not isinstance(corpus, Corpus):
        raise CorpusError(f"a study needs a Corpus, got {type(corpus).__name__}")
    if len(corpus.languages) < 2:
        raise CorpusError(f"a study compares languages: the corpus has only {list(corpus.languages)}")
    unknown = corpus.unknown_languages()
    if unknown:
        codes = [corpus.codes[lang] for lang in unknown]
        raise LanguageError(
            f"the corpus has texts in {codes}, which are not known language codes: use ISO 639 or FLORES "
            f"codes, or leave them out ({name['languages']})"
        )
    from ..model.tokens import require_tokens

    for lang in corpus.languages:  # all empty: no tokenizer gives a token (the model is not needed)
        if all(not t.text.strip() and not (t.response or "").strip() for t in corpus[lang]):
            require_tokens(lang, 0)
    held = settings.held_out
    if isinstance(held, float) and not 0.0 < held < 1.0:
        raise CorpusError(f"{name['held_out']} is a fraction in (0, 1) or a count of texts, got {held}")
    if isinstance(held, int) and held < 1:
        raise CorpusError(f"{name['held_out']} must hold out at least one text, got {held}")
    for setting, value, least in (("batch_size", settings.batch_size, 1), ("eval_texts", settings.eval_texts, 1),
                                  ("controls", settings.controls, 0)):
        if value < least:
            raise CorpusError(f"{name[setting]} must be at least {least}, got {value}")
    count = held_out_count(corpus, settings)
    need = count + settings.min_train_texts
    small = {lang: len(corpus[lang]) for lang in corpus.languages if len(corpus[lang]) < need}
    if small:
        rule = (f"{held:.0%} of the texts, at least {settings.min_held_out}" if isinstance(held, float)
                else f"{held} texts")
        raise CorpusError(
            f"too few texts in {small}: a study holds out {count} texts of each language ({name['held_out']}: "
            f"{rule}) and keeps at least {settings.min_train_texts} for the statistics, so it needs {need}; "
            f"add texts, hold out fewer ({name['held_out']}) or leave the language out ({name['languages']})"
        )
    return count


def check_texts(lm: ModelAdapter, train: Corpus, evaluation: Corpus) -> None:
    """Tokenise the study's texts once before the first step: a text the tokenizer
    cannot take, or a language with no token, is refused now rather than steps later.

    Raises:
        CorpusError: naming the language (and the text's index).
    """
    from ..model.tokens import encode_language

    for part in (train, evaluation):
        for lang in part.languages:
            encode_language(lm, lang, part[lang])


_CORRUPT: Any = object()
_STUDY_KIND = "tl_multilingual.Study"
# What a study writes into its folder.
_STUDY_ENTRIES = {"manifest.json", "statistics", "neurons", "lens", "stages.json", "deactivation", "sharing",
                  "tables", "figures", "report.html"}


def _read_study_manifest(path: Path) -> dict[str, Any] | None:
    """A study folder's manifest: None if absent, ``_CORRUPT`` if unreadable."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _CORRUPT
    return manifest if isinstance(manifest, dict) else _CORRUPT


def check_output_folder(out: Path, command: str | None = None) -> None:
    """Refuse, before anything is computed, an output folder that cannot be written or
    that holds something other than a study (of the subcommand ``command``, e.g.
    ``"run"``, when given). Temporary files left by an interrupted save are ignored: a
    study they belong to is resumed in place."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise TLMultilingualError(f"{out} exists and is not a folder")
        entries = [entry for entry in out.iterdir() if not is_temporary(entry)]
        manifest = _read_study_manifest(out / "manifest.json")
        if entries and manifest is None:
            raise TLMultilingualError(f"{out} is not empty and holds no study: choose a new or empty folder")
        if manifest is _CORRUPT:
            foreign = sorted(e.name for e in entries if e.name not in _STUDY_ENTRIES)
            if foreign:
                raise TLMultilingualError(
                    f"{out / 'manifest.json'} is corrupt and {out} holds {foreign[:3]}, which no study writes: "
                    "choose a new or empty folder"
                )
        elif manifest is not None:
            if manifest.get("kind") != _STUDY_KIND:
                raise TLMultilingualError(
                    f"{out} holds a saved {manifest.get('kind')!r}, not a study: choose a new or empty folder"
                )
            previous = manifest.get("command")
            previous = previous[1] if isinstance(previous, list) and len(previous) > 1 else None
            if command is not None and previous not in (None, command):
                raise TLMultilingualError(
                    f"{out} holds a study of 'tl-multilingual {previous}', not of 'tl-multilingual {command}': "
                    "choose a new or empty folder"
                )
        probe = out
    else:
        probe = out.parent
        while not probe.exists():
            probe = probe.parent
    try:  # the only sure test, also for root: make (and remove) a folder there
        Path(tempfile.mkdtemp(prefix=".tlm-write-test-", dir=probe)).rmdir()
    except OSError as err:
        raise TLMultilingualError(f"cannot write to {out}: {probe} is not writable ({err.strerror})") from err

"""The full language-neuron study of one model, step by step, resumable.

[`Study.run()`][tl_multilingual.study.pipeline.Study.run] runs the steps of the table
[`STEPS`][tl_multilingual.study.steps.STEPS] in order, then writes the report. Each step saves
its result in the study folder and records, in ``manifest.json``, a key made of the
settings it declares and the keys of the steps it depends on; a step whose result
exists under the same key is loaded, not recomputed. The stage map is passed to the
steps that use it; nothing is attached to the model.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import CorpusError, SaveError, TLMultilingualError, warn
from ..inputs.corpus import Corpus
from ..model.adapters import ModelAdapter, adapt
from ..neurons.identification import METHODS
from ..persist import is_temporary, library_versions, read_json, write_text
from .steps import STEPS, Skip, Step, StudySettings, key, lens_prompts

__all__ = ["Study", "DEMO_SETTINGS", "check_output_folder", "study_entries"]


# Gemma-3-270m on two CPU cores: see the README's timings.
DEMO_SETTINGS = StudySettings(
    batch_size=16, max_tokens_per_language=None, held_out=30, eval_texts=4, controls=1,
    control_variant="specific+related", lens_pairs=2, lens_words=30, sharing_items=20, n_boot=100,
    stage_words=3,  # the stage experiment reads the lens in every run: keep its prompts few
)


@dataclass
class Study:
    """One study of one model on one corpus, in the folder ``out``.

    Attributes:
        out: the study folder.
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        corpus: texts per language; a share of each language is held out of the
            statistics (``settings.held_out``) for the experiments.
        settings: what the steps compute.
        words: a word list for the lens prompts ([`tl_multilingual.data.words()`][tl_multilingual.data.words]); None: no lens.
        model_record: what to record about the model beside what the adapter knows.
        command: the command line, recorded in the manifest.
        quiet: no progress lines or bars.
        log: where progress lines go (default: standard error).
    """

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
        self.evaluation = self.held.head(self.settings.eval_texts)
        check_texts(self.lm, self.train, self.evaluation)
        try:
            lens_prompts(self.words, self.corpus.languages, self.settings)
        except (TLMultilingualError, KeyError, TypeError, AttributeError) as err:
            raise CorpusError(f"the word list cannot make lens prompts: {err}") from err
        self.manifest_path = self.out / "manifest.json"
        self.manifest = self._read_manifest()
        self.keys: dict[str, str | None] = {}
        self._checkpoint: Path | None = None

    @property
    def progress(self) -> bool:
        """Whether the steps show progress bars."""
        return not self.quiet

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

    @property
    def checkpoint(self) -> Path | None:
        """Where the step now running keeps the work it has done so far (a folder named
        by the step and its key, under ``checkpoints/``), so that a study interrupted
        inside a long step resumes there; removed when the step's result is saved."""
        return self._checkpoint

    @property
    def model_key(self) -> str:
        return key({**self.lm.describe(), **self.model_record})

    def setting(self, name: str) -> Any:
        """The value of a setting a step declares: a [`StudySettings`][tl_multilingual.study.steps.StudySettings]
        field, or ``"words"`` (the word list).

        Raises:
            TLMultilingualError: for any other name.
        """
        if name == "words":
            return self.words
        if name not in asdict(self.settings):
            raise TLMultilingualError(f"a step declares the setting {name!r}, which StudySettings "
                                      "does not have")
        return getattr(self.settings, name)

    def key(self, step: Step) -> str:
        """The cache key of ``step``: its declared settings, the keys of the steps it
        depends on (None for a skipped one), the model and the corpus. Needs the keys of
        its dependencies (they run first)."""
        missing = [d for d in step.depends if d not in self.keys]
        if missing:
            raise TLMultilingualError(f"the step {step.name!r} depends on {missing}, which have "
                                      "not run before it")
        return key({"step": step.name,
                    "settings": {name: self.setting(name) for name in step.settings},
                    "depends": {d: self.keys[d] for d in step.depends},
                    "model": self.model_key, "data": self.corpus.fingerprint()})

    # -- the steps ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run (or resume) every step of [`STEPS`][tl_multilingual.study.steps.STEPS], then write
        the report; returns the manifest.

        Raises:
            UnsupportedModelError: a step the study can never run (the stage map of a
                model with fewer than four layers), before anything is written.
        """
        for step in STEPS.values():
            if step.check is not None:
                step.check(self)
        distributed.on_main(self._prepare_folder)
        done: dict[str, Any] = {}
        for step in STEPS.values():
            done[step.name] = self._step(step, done)
        distributed.on_main(self._report)
        return self.manifest

    def _step(self, step: Step, done: dict[str, Any]) -> Any:
        """Load ``step``'s result if it is up to date, else compute and save it; None
        when the step is skipped."""
        key = self.key(step)
        path = self.out / step.path
        steps = self.manifest.setdefault("steps", {})
        number, total = list(STEPS).index(step.name) + 1, len(STEPS) + 1
        # Rank 0 decides, loads and writes; every rank computes its share (see distributed).
        if distributed.broadcast(steps.get(step.name, {}).get("key") == key and path.exists()):
            self.keys[step.name] = key
            self._say(f"[{number}/{total}] {step.name}: up to date, reusing "
                      f"{path.relative_to(self.out)}")
            return distributed.on_main(lambda: step.load_result(path))
        self._say(f"[{number}/{total}] {step.name} ...")
        start = time.perf_counter()
        self._checkpoint = self.out / "checkpoints" / f"{step.name}-{key}"
        result = step.run(self, {d: done.get(d) for d in step.depends})
        if isinstance(result, Skip):
            self.keys[step.name] = None
            self._say(f"{step.name}: skipped ({result.reason})")

            def note() -> None:  # the report says why; an older result no longer stands
                steps.pop(step.name, None)
                self.manifest.setdefault("skipped", {})[step.name] = result.reason
                self._write_manifest()

            distributed.on_main(note)
            return None
        self.keys[step.name] = key
        distributed.on_main(lambda: self.manifest.get("skipped", {}).pop(step.name, None))

        def record() -> float:
            step.save_result(result, path)
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)  # the step's own, and stale ones
            seconds = time.perf_counter() - start
            settings = {name: self.setting(name) for name in step.settings if name != "words"}
            steps[step.name] = {"key": key, "seconds": round(seconds, 2), "settings": settings,
                                "output": step.path}
            self._write_manifest()
            return seconds

        seconds = distributed.on_main(record)
        self._say(f"[{number}/{total}] {step.name} done in {seconds:.1f} s")
        for sentence in getattr(result, "warnings", ()):  # a result's cautions (the stage map's)
            self._say(f"{step.name}: {sentence}")
        self._partial_report()
        return result

    def _partial_report(self) -> None:
        """Rewrite ``report.html`` with the steps finished so far (the reader sees findings
        as they arrive); the final report is written by the last step."""
        from .report import write_report

        write_report(self.out)

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
        total = len(STEPS) + 1
        self._say(f"[{total}/{total}] report ...")
        write_report(self.out)
        self.manifest.setdefault("steps", {})["report"] = {"seconds": round(time.perf_counter() - start, 2),
                                                           "output": "report.html"}
        self._write_manifest()
        self._say(f"report: {self.out / 'report.html'}")


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
                 "controls": "StudySettings.controls", "method": "StudySettings.method",
                 "max_tokens_per_language": "StudySettings.max_tokens_per_language"}


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
            settings out of range (a batch size, evaluation texts or token budget below
            1, negative controls, an unknown method).
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
    budget = settings.max_tokens_per_language
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        every = "leave it out to read every token" if names else "None reads every token"
        raise CorpusError(f"{name['max_tokens_per_language']} must be a positive number of tokens "
                          f"({every}), got {budget}")
    if settings.method not in METHODS:
        raise CorpusError(f"{name['method']} must be an identification method, one of "
                          f"{tuple(METHODS)}; got {settings.method!r}")
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
_REPORT_ENTRIES = ("manifest.json", "tables", "figures", "report.html", "checkpoints")


def study_entries() -> set[str]:
    """What a study writes into its folder: the first part of every step's path
    ([`STEPS`][tl_multilingual.study.steps.STEPS]), the manifest and the report."""
    return {*_REPORT_ENTRIES, *(Path(step.path).parts[0] for step in STEPS.values())}


def _well_formed(manifest: Any) -> bool:
    """Whether a decoded study manifest has the shape a study writes: an object whose
    ``kind`` is a string, ``command`` a list of strings, ``model``, ``data`` and
    ``settings`` objects, and ``steps`` an object of objects whose ``key`` (when
    present) is a string. Fields it lacks are fine (an interrupted first write)."""
    if not isinstance(manifest, dict):
        return False
    expected = {"kind": str, "command": list, "model": dict, "data": dict, "settings": dict,
                "steps": dict, "versions": dict}
    if any(name in manifest and not isinstance(manifest[name], kind)
           for name, kind in expected.items()):
        return False
    if not all(isinstance(part, str) for part in manifest.get("command", [])):
        return False
    for entry in manifest.get("steps", {}).values():
        if not isinstance(entry, dict) or not isinstance(entry.get("key", ""), (str, type(None))):
            return False
    return True


def _read_study_manifest(path: Path) -> dict[str, Any] | None:
    """A study folder's manifest: None if absent, ``_CORRUPT`` if unreadable or, for a
    study's manifest, not of the shape a study writes (see ``_well_formed``)."""
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except SaveError:
        return _CORRUPT
    if isinstance(manifest, dict) and "kind" in manifest and manifest["kind"] != _STUDY_KIND:
        return manifest  # another kind of file: the callers refuse it by its kind
    return manifest if _well_formed(manifest) else _CORRUPT


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
            foreign = sorted(e.name for e in entries if e.name not in study_entries())
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

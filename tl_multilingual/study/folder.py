"""A finished (or partly finished) study folder as one result: load it, copy it, share it.

[`StudyFolder`][tl_multilingual.study.folder.StudyFolder] reads the folder a
[`Study`][tl_multilingual.study.pipeline.Study] writes (``manifest.json``, the saved statistics,
neurons, lens, stage map, deactivation results, sharing classes, the report) and
loads every finished step's result with that result's own checks. With
[`HubMixin`][tl_multilingual.hub.HubMixin] it is pushed to the Hugging Face Hub as one repository
(``StudyFolder.load("study/").push_to_hub("user/study")``) and loaded back by name
(``StudyFolder.from_pretrained("user/study")``); one result of it loads on its own
with ``subfolder=`` (``LanguageNeurons.from_pretrained("user/study",
subfolder="neurons/ternary")``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import SaveError, TLMultilingualError
from ..hub import HubMixin
from ..persist import atomic_folder, is_temporary, recover
from .pipeline import _STUDY_KIND, _read_study_manifest, study_entries
from .report import _load

__all__ = ["StudyFolder"]



def _entries() -> set[str]:
    """What a study folder may hold: what a study writes, and the card of a pushed study."""
    return study_entries() | {"README.md"}


class StudyFolder(HubMixin):
    """The saved results of one study.

    Attributes:
        path: the folder read.
        manifest: the study's ``manifest.json`` (model, data fingerprint and
            languages, settings, steps, versions).
        results: per step of the study's step table
            ([`STEPS`][tl_multilingual.study.steps.STEPS]: ``statistics``, ``neurons`` (a
            dict of method to neurons), ``lens``, ``stages``, ``deactivation``,
            ``stage_effects``, ``sharing``) the loaded result, or None for a step not
            finished (or skipped).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], results: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.results = results

    @property
    def languages(self) -> list[str]:
        """The languages of the study's corpus."""
        return list(self.manifest.get("data", {}).get("languages", []))

    @property
    def model(self) -> dict[str, Any]:
        """The model's record (name, architecture, shape, source and revision when known)."""
        return dict(self.manifest.get("model", {}))

    def __getitem__(self, name: str) -> Any:
        if name not in self.results:
            raise KeyError(f"a study has no result {name!r}; it has {sorted(self.results)}")
        return self.results[name]

    def __repr__(self) -> str:
        done = sorted(k for k, v in self.results.items() if v is not None)
        return f"StudyFolder({self.model.get('name')!r}, {self.languages}, results {done})"

    @classmethod
    def load(cls, path: str | Path) -> StudyFolder:
        """Read a study folder, loading every finished step's result with its own checks
        (checksums, manifest fields).

        Raises:
            SaveError: the folder holds no study, its manifest is unreadable, or a
                result is damaged or edited.
        """
        folder = Path(path)
        recover(folder)
        manifest = _read_study_manifest(folder / "manifest.json")
        if manifest is None:
            raise SaveError(f"{folder} holds no study (no manifest.json)")
        if not isinstance(manifest, dict) or manifest.get("kind") != _STUDY_KIND:
            kind = manifest.get("kind") if isinstance(manifest, dict) else None
            raise SaveError(
                f"{folder / 'manifest.json'} is not the manifest of a study"
                + (f" (it records a {kind!r})" if kind else " (it is corrupt)")
            )
        try:
            results = _load(folder)
        except SaveError:
            raise
        except (TLMultilingualError, OSError, ValueError, KeyError) as err:
            raise SaveError(f"{folder}: a result of the study cannot be loaded: {err}") from err
        results.pop("manifest", None)
        results.pop("settings", None)
        return cls(folder, manifest, results)

    def save(self, path: str | Path) -> Path:
        """Copy the study folder to ``path`` (atomically; an existing study there is
        replaced, anything else refused). Temporary files of interrupted saves are left
        out.

        Raises:
            SaveError: ``path`` holds something other than a study, or copying failed.
        """
        target = Path(path)
        if target.resolve() == self.path.resolve():
            return target

        def replaceable(existing: Path) -> bool:
            manifest = _read_study_manifest(existing / "manifest.json")
            return (
                isinstance(manifest, dict)
                and manifest.get("kind") == _STUDY_KIND
                and all(
                    entry.name in _entries() or is_temporary(entry) for entry in existing.iterdir()
                )
            )

        with atomic_folder(target, replaceable=replaceable) as staging:
            for entry in sorted(self.path.iterdir()):
                if is_temporary(entry):
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, staging / entry.name)
                else:
                    shutil.copy2(entry, staging / entry.name)
        return target

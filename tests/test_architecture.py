"""The package's shape: a one-way import graph, model internals in the model layer only,
and every module importable as a module."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import tl_multilingual

PACKAGE = Path(tl_multilingual.__file__).parent
MODEL_LAYER = {"adapters", "readout"}  # hook names and weight reads live here only
BUILDERS = {"models", "gguf"}  # build models from weights; never read a wrapped model's internals
INTERNALS = {"W_out", "W_in", "W_U", "W_E", "W_gate", "b_U", "ln_final", "unembed", "cfg", "blocks"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__") or "__init__": p
            for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Package modules imported by ``name`` anywhere in its file (also inside functions)."""
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [".".join(target)] if node.module else [".".join([*target, a.name]) for a in node.names]
            out.update(n for n in names if n)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_multilingual."):
            out.add(node.module.removeprefix("tl_multilingual."))
    return out


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: {m for m in _imports(name, path) if m in modules and m != name}
             for name, path in modules.items() if name != "__init__"}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_hook_names_and_model_internals_live_in_the_model_layer():
    offenders = []
    for name, path in _modules().items():
        leaf = name.split(".")[-1]
        if leaf in MODEL_LAYER:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                    and ("hook_" in node.value or node.value.startswith("blocks."))):
                offenders.append(f"{name}:{node.lineno} spells a hook name {node.value!r}")
            if (leaf not in BUILDERS and isinstance(node, ast.Attribute) and node.attr in INTERNALS
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                offenders.append(f"{name}:{node.lineno} reads .{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_every_module_imports_as_a_module():
    """``import tl_multilingual.<name> as m`` binds the module, never a function of the
    same name."""
    for info in pkgutil.walk_packages(tl_multilingual.__path__, "tl_multilingual."):
        importlib.import_module(info.name)
        bound = tl_multilingual
        for part in info.name.split(".")[1:]:
            bound = getattr(bound, part)
        assert isinstance(bound, types.ModuleType), f"import {info.name} as m binds {type(bound).__name__}"


# The 0.1.0 release: its top-level ``__all__``, and its modules that moved into subpackages.
RELEASED_NAMES = """
    adapt ModelAdapter models evaluate data Corpus Text collect_stats ActivationStats identify
    ablate ablation_hooks boost steer patch record intervene Edit Interventions perplexity
    choice_accuracy answer_accuracy generate MultipleChoice ablation_matrix AblationResult
    language_lens LensResult LensPrompt prompts word_tokens map_stages StageMap STAGES
    patch_neurons PatchResult ParallelItems ParallelItem sharing Sharing SHARING_CLASSES attribute
    Attribution class_attribution item_correctness correct_vs_incorrect boost_experiment compare
    compare_series Comparison Series LanguageNeurons NeuronMask normalize_language language_name
    TLMultilingualError UnsupportedModelError LanguageError CorpusError StatsError
    IdentificationError MaskError SaveError
""".split()
MOVED_MODULES = {
    "adapters": "model.adapters", "collect": "neurons.collect", "corpus": "inputs.corpus",
    "gguf": "model.gguf", "interventions": "causal.interventions", "items": "inputs.items",
    "languages": "inputs.languages", "lens": "stages.lens", "masks": "neurons.masks",
    "patching": "causal.patching", "report": "study.report", "stats": "neurons.stats",
    "tokens": "model.tokens", "wordtokens": "inputs.wordtokens",
}
RELEASED_SUBPACKAGE_NAMES = {
    "stages": ("STAGES", "StageMap", "map_stages", "segment", "neuron_features", "lens_features"),
    "experiments": ("ablation_matrix", "AblationResult", "variant_mask"),
    "neurons": ("LanguageNeurons", "CLASSES"),
    "study": ("StudySettings", "Study", "DEMO_SETTINGS", "check_output_folder"),
}


def _fresh(monkeypatch, module, name):
    """Forget a name a deprecation shim already resolved (it is kept after its warning)."""
    monkeypatch.delitem(vars(module), name, raising=False)


def test_every_released_name_still_resolves(monkeypatch):
    import warnings

    for name in RELEASED_NAMES:
        _fresh(monkeypatch, tl_multilingual, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert getattr(tl_multilingual, name) is not None, name


def test_moved_modules_resolve_as_attributes_with_one_warning_and_never_as_paths(monkeypatch):
    import warnings

    import pytest

    for old, new in MOVED_MODULES.items():
        home = importlib.import_module(f"tl_multilingual.{new}")
        _fresh(monkeypatch, tl_multilingual, old)
        message = f"tl_multilingual.{old} is now tl_multilingual.{new}"
        with pytest.warns(DeprecationWarning, match=message) as caught:
            exec(f"from tl_multilingual import {old} as module", namespace := {})
        assert namespace["module"] is home and len(caught) == 1  # one warning for one use
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert getattr(tl_multilingual, old) is home  # once: the name is kept
        with pytest.raises(ModuleNotFoundError, match=f"tl_multilingual.{old}"):
            importlib.import_module(f"tl_multilingual.{old}")
    for name in ("sharing", "identify", "compare"):  # functions: no module import binds them
        with pytest.raises(ImportError):
            exec(f"import tl_multilingual.{name} as m", {})
        assert callable(getattr(tl_multilingual, name))
        assert not isinstance(getattr(tl_multilingual, name), types.ModuleType)


def test_released_names_of_the_subpackages_resolve_with_a_warning(monkeypatch):
    import pytest

    for package, names in RELEASED_SUBPACKAGE_NAMES.items():
        module = importlib.import_module(f"tl_multilingual.{package}")
        for name in names:
            _fresh(monkeypatch, module, name)
            with pytest.warns(DeprecationWarning, match=f"tl_multilingual.{package}.{name} is now"):
                value = getattr(module, name)
            assert value is not None
        with pytest.raises(AttributeError, match="no attribute 'anything_else'"):
            module.anything_else  # noqa: B018


def test_the_deprecation_layer_is_module_getattr_only():
    import sys

    assert type(tl_multilingual) is types.ModuleType  # no module-class swap
    finders = [f for f in sys.meta_path if type(f).__module__.startswith("tl_multilingual")]
    assert not finders  # no import hook


def test_renamed_and_moved_names_still_work_with_a_warning(monkeypatch):
    import pytest

    import tl_multilingual.experiments as experiments
    from tl_multilingual.experiments import deactivation

    pairs = {
        "ablation_matrix": deactivation.deactivation_matrix,
        "AblationResult": deactivation.DeactivationResult,
        "boost_experiment": tl_multilingual.experiments.sharing_experiments.boost_experiment,
        "class_attribution": tl_multilingual.causal.attribution.class_attribution,
    }
    for old, new in pairs.items():
        _fresh(monkeypatch, tl_multilingual, old)
        with pytest.warns(DeprecationWarning, match=old):
            assert getattr(tl_multilingual, old) is new
        assert old not in tl_multilingual.__all__
    _fresh(monkeypatch, experiments, "ablation_matrix")
    with pytest.warns(DeprecationWarning, match="deactivation_matrix"):
        assert experiments.ablation_matrix is deactivation.deactivation_matrix


def test_the_top_level_names_its_own_modules():
    assert len(tl_multilingual.__all__) == len(set(tl_multilingual.__all__))
    for name in tl_multilingual.__all__:
        assert getattr(tl_multilingual, name) is not None
    assert isinstance(tl_multilingual.plot, types.ModuleType)
    assert "plot" not in tl_multilingual.__all__  # it needs matplotlib

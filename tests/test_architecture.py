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


def test_renamed_modules_still_import_with_a_warning():
    import warnings

    import pytest

    for old, new in (("identify", "neurons.identification"), ("compare", "experiments.comparison"),
                     ("sharing", "neurons.sharing_classes"), ("lens", "stages.lens"), ("adapters", "model.adapters")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(f"tl_multilingual.{new}")
        with pytest.warns(DeprecationWarning, match=f"tl_multilingual.{new}"):
            module = importlib.import_module(f"tl_multilingual.{old}")
        assert module is importlib.import_module(f"tl_multilingual.{new}")
        assert module.__spec__.name == f"tl_multilingual.{new}"
        if old in ("identify", "compare", "sharing"):  # the top-level functions stay functions
            assert callable(getattr(tl_multilingual, old))
            assert not isinstance(getattr(tl_multilingual, old), types.ModuleType)


def test_renamed_and_moved_names_still_work_with_a_warning():
    import pytest

    from tl_multilingual.experiments import deactivation as experiments

    pairs = {
        "ablation_matrix": experiments.deactivation_matrix,
        "AblationResult": experiments.DeactivationResult,
        "boost_experiment": tl_multilingual.experiments.sharing_experiments.boost_experiment,
        "class_attribution": tl_multilingual.causal.attribution.class_attribution,
    }
    for old, new in pairs.items():
        with pytest.warns(DeprecationWarning, match=old):
            assert getattr(tl_multilingual, old) is new
        assert old not in tl_multilingual.__all__
    with pytest.warns(DeprecationWarning, match="deactivation_matrix"):
        assert experiments.ablation_matrix is experiments.deactivation_matrix


def test_the_top_level_names_its_own_modules():
    assert len(tl_multilingual.__all__) == len(set(tl_multilingual.__all__))
    for name in tl_multilingual.__all__:
        assert getattr(tl_multilingual, name) is not None


def test_old_module_attributes_still_resolve_with_a_warning():
    import pytest

    with pytest.warns(DeprecationWarning, match="inputs.wordtokens"):
        module = tl_multilingual.wordtokens
    assert module is importlib.import_module("tl_multilingual.inputs.wordtokens")

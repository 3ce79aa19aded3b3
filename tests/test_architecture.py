"""The import structure of ``beedet``: arrows point one way.

Read from the source with ``ast`` (nothing is imported), so the test is fast and sees every module:

* **No import cycles** between beedet modules. *Every* import statement counts: at module level,
  in class bodies, inside functions (a deferred import, the way a module reaches a heavy or
  optional dependency only when it needs it, is still an arrow of the architecture) and under
  ``if TYPE_CHECKING:``. A cycle message marks the deferred arrows, which are the ones a fix
  usually turns around. Not counted: the implicit arrows to a package's ``__init__`` that
  loading its submodule runs.
* **``beedet.models`` is a floor**: its modules (the networks and the loss they train with,
  ``beedet.models.losses``) import nothing from beedet outside ``beedet.models``. Every import
  counts here too. Commands that build whole systems (``beedet.model_summary``,
  ``beedet.fit_anchors``) live above ``models/``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "beedet"
MODELS = "beedet.models"


@dataclass(frozen=True)
class Import:
    """One arrow: ``source`` imports ``target`` (both dotted module names) at ``line``."""

    source: str
    target: str
    line: int
    deferred: bool  # inside a function body or under ``if TYPE_CHECKING:``: not run on import


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def beedet_modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module and package under ``root``."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.Import | ast.ImportFrom, source: str, is_package: bool, known: set[str]) -> list[str]:
    """The beedet modules an import statement names; ``from pkg import sub`` names the submodule
    ``pkg.sub`` where there is one, else ``pkg``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name == "beedet" or alias.name.startswith("beedet.")]
    if node.level:
        package = source.split(".") if is_package else source.split(".")[:-1]
        base_parts = package[: len(package) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base != "beedet" and not base.startswith("beedet."):
        return []
    targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    return list(dict.fromkeys(targets))


def imports_of(source: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of a beedet module in ``path``, marked whether it is deferred."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _resolve(node, source, is_package, known):
                found.append(Import(source, target, node.lineno, deferred))
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            deferred = True
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, deferred)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, deferred)

    visit(tree, False)
    return found


def import_graph(root: Path = PACKAGE_ROOT) -> list[Import]:
    modules = beedet_modules(root)
    known = set(modules)
    return [arrow for name, path in modules.items() for arrow in imports_of(name, path, known)]


def import_cycles(arrows: list[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)
    of ``arrows``, each sorted; Tarjan's algorithm, iterative."""
    graph: dict[str, set[str]] = {}
    for arrow in arrows:
        graph.setdefault(arrow.source, set()).add(arrow.target)
        graph.setdefault(arrow.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    cycles.append(sorted(component))
    return sorted(cycles)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def upward_arrows(arrows: list[Import], floor: str = MODELS) -> list[str]:
    """Arrows (any kind) from inside ``floor`` to a beedet module outside it."""
    return [f"{arrow.source}:{arrow.line} imports {arrow.target}" for arrow in arrows
            if _within(arrow.source, floor) and not _within(arrow.target, floor)]


@pytest.fixture(scope="module")
def arrows() -> list[Import]:
    return import_graph()


def test_the_graph_sees_the_package(arrows: list[Import]) -> None:
    """Guards the checks below against reading nothing: known arrows are found and resolved."""
    found = {(a.source, a.target, a.deferred) for a in arrows}
    assert ("beedet.models.ssd", "beedet.models.losses", False) in found
    assert ("beedet.models.ssd", "beedet.models.backbones", False) in found
    assert ("beedet.data.sources", "beedet.data.synthetic", True) in found  # inside SyntheticSource.read
    assert len(beedet_modules()) > 50


def test_no_import_cycles_between_beedet_modules(arrows: list[Import]) -> None:
    cycles = import_cycles(arrows)
    inside = [[a for a in arrows if a.source in cycle and a.target in cycle] for cycle in cycles]
    assert cycles == [], "import cycles:\n" + "\n".join(
        "  " + ", ".join(f"{a.source}:{a.line} -> {a.target}{' (deferred)' if a.deferred else ''}" for a in arrows_in)
        for arrows_in in inside
    )


def test_models_import_nothing_above_them(arrows: list[Import]) -> None:
    bad = upward_arrows(arrows)
    assert bad == [], "beedet.models must not import from above it:\n" + "\n".join(bad)


def test_the_checks_catch_a_cycle_and_an_upward_arrow(tmp_path: Path) -> None:
    """The checks fail on a small package with cycles (a <-> b through a relative import in a
    class body; c <-> d through ``TYPE_CHECKING`` and a function) and an upward arrow hidden in a
    function of models/."""
    package = tmp_path / "beedet"
    (package / "models").mkdir(parents=True)
    for init in (package / "__init__.py", package / "models" / "__init__.py"):
        init.write_text("")
    (package / "a.py").write_text("from beedet.b import THING\n")
    (package / "b.py").write_text("class Holder:\n    from . import a\nTHING = 1\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import beedet.d\n")
    (package / "d.py").write_text("def later():\n    import beedet.c\n")
    (package / "models" / "losses.py").write_text("")
    (package / "models" / "net.py").write_text("import beedet.models.losses\n\ndef build():\n    from beedet.a import THING\n")
    arrows = import_graph(package)
    assert import_cycles(arrows) == [["beedet.a", "beedet.b"], ["beedet.c", "beedet.d"]]
    assert upward_arrows(arrows) == ["beedet.models.net:4 imports beedet.a"]


def test_entry_scripts_read_top_to_bottom() -> None:
    """train.py and evaluate.py stay short: the work lives in beedet/ (assembly builds, reporting
    writes). evaluate.py knows nothing of SageMaker; train.py only hands its `--key value`
    arguments to SageMaker's script-mode decoding, because SageMaker starts train.py itself."""
    repo = PACKAGE_ROOT.parent
    for script in ("train.py", "evaluate.py"):
        lines = (repo / script).read_text().splitlines()
        assert len(lines) < 60, f"{script} has {len(lines)} lines"
    evaluate_imports = [a.target for a in imports_of("evaluate", repo / "evaluate.py", set(beedet_modules()))]
    assert not [m for m in evaluate_imports if m.startswith("beedet.sagemaker")]
    train_imports = [a.target for a in imports_of("train", repo / "train.py", set(beedet_modules()))]
    assert [m for m in train_imports if m.startswith("beedet.sagemaker")] == ["beedet.sagemaker.training_job"]

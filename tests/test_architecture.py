"""The architecture's import and stage rules, checked on the source tree (docs/architecture.md explains them):
one stage contract and one pipeline table, no import cycles, stages that never import each other, and command
line wording only in the command line."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "objectives", "demoworld")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (never executed)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imported_modules(name: str) -> set[str]:
    """The project modules ``name`` imports anywhere (lazy imports inside functions too), less its own parent
    packages (always initialised first) and imports that only type checkers read."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            found |= subs if len(subs) == len(node.names) else subs | {base}
    out = set()
    for target in found:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            out.add(target)
    return out


GRAPH = {name: imported_modules(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_project_modules():
    assert cycles(GRAPH) == []


def test_the_product_never_imports_the_demo_world():
    offenders = {n: sorted(t for t in targets if t.split(".")[0] == "demoworld")
                 for n, targets in GRAPH.items() if n.split(".")[0] in ("search", "objectives")}
    assert {n: t for n, t in offenders.items() if t} == {}


# ------------------------------------------------------------------------------------------------ stages


def test_every_stage_module_exposes_the_contract_and_appears_once_in_the_table():
    from search.pipeline import STAGES

    names = [s.NAME for s in STAGES]
    assert len(set(names)) == len(names) == len(set(STAGES))
    for stage in STAGES:
        assert isinstance(stage.NAME, str) and isinstance(stage.SECTIONS, tuple), stage.__name__
        assert list(inspect.signature(stage.problems).parameters) == ["cfg", "run"], stage.__name__
        assert list(inspect.signature(stage.run).parameters) == ["cfg", "run", "ctx"], stage.__name__
        assert {"NAME", "SECTIONS", "problems", "run"} <= set(stage.__all__), stage.__name__
    # a module of search/stages that has the contract's names is in the table
    table = {s.__name__ for s in STAGES}
    shaped = {n for n, p in MODULES.items() if n.startswith("search.stages.")
              and re.search(r"^NAME = ", p.read_text(encoding="utf-8"), re.M)}
    assert shaped == table


def test_the_stages_sections_partition_the_run_config():
    from search.config import RunConfig
    from search.pipeline import STAGES

    claimed = [section for s in STAGES for section in s.SECTIONS]
    assert len(claimed) == len(set(claimed)), "a section is claimed by two stages"
    assert set(claimed) == set(RunConfig.model_fields)


def test_a_stage_never_imports_another_stage():
    from search.pipeline import STAGES

    table = {s.__name__ for s in STAGES}
    assert {n: sorted(GRAPH[n] & (table - {n})) for n in table if GRAPH[n] & (table - {n})} == {}


# ------------------------------------------------------------------------------------------------ wording


def cli_flags() -> set[str]:
    """Every option string of ``merge-search`` and its sub-commands (``--trial``, ``--top-k``, ...)."""
    import argparse

    from search.cli import build_parser

    flags: set[str] = set()
    todo = [build_parser()]
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            flags |= {o for o in action.option_strings if o.startswith("--")}
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return flags - {"--help"}


def message_strings(path: Path) -> list[str]:
    """The string constants of a module, less its docstrings (messages, not documentation)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_cli_flag_is_spelled_outside_the_cli():
    flags = cli_flags()
    assert {"--trial", "--top-k", "--from", "--out"} <= flags  # the finder sees the sub-commands' options
    pattern = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
    found = sorted({f"{module_name(p)}: {flag}" for n, p in MODULES.items()
                    if not (n.startswith("search.cli") or n == "demoworld.cli")
                    for text in message_strings(p) for flag in pattern.findall(text) if flag in flags})
    assert found == []

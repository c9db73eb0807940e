"""The architecture's rules, checked on the source tree (docs/architecture.md explains them)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "objectives", "demoworld")


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import statement in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


CLI_MODULES = ("search/cli/", "demoworld/cli.py")  # the CLI and its one plugin command (demo-world)


def test_only_the_cli_imports_argparse_or_the_cli():
    offenders = [rel(p) for p in sources(*PACKAGES) if not rel(p).startswith(CLI_MODULES)
                 for mod, names in imports(p)
                 if mod == "argparse" or mod.startswith("search.cli") or (mod == "search" and "cli" in names)]
    assert offenders == []


def test_the_product_never_imports_the_demo():
    """search/ and objectives/ import nothing of demoworld/, not even inside a function (the CLI finds the
    demo-world command as an entry-point plugin)."""
    offenders = [f"{rel(p)}: {mod}" for p in sources("search", "objectives") for mod, _ in imports(p)
                 if mod.split(".")[0] == "demoworld"]
    assert offenders == []


def test_objectives_never_imports_search():
    assert [rel(p) for p in sources("objectives") for mod, _ in imports(p) if mod.split(".")[0] == "search"] == []


def test_no_source_file_over_400_lines():
    long = {rel(p): n for p in sources(*PACKAGES) if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def test_readme_is_at_most_15_kb_and_links_the_docs():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 15 * 1024
    for doc in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in text, f"README does not link docs/{doc.name}"


# Run-folder file names and trial user-attribute keys: spelled in search/rundir.py alone.
RUN_FILES = ("study.db", "run.json", "resolved.yaml", "summary.json", "heldout.json", "heldout.md", "best.yaml",
             "best.json", "report.md", "metrics.json", "loss.png", "data_report.json", "log_history.json")
ATTR_USE = re.compile(r"""(user_attrs(\.get)?\s*[\[(]\s*|set_user_attr\(\s*)["'][a-z_]+["']""")


def test_run_folder_names_and_trial_attribute_keys_live_in_rundir():
    found = []
    for p in sources("search"):
        if rel(p) == "search/rundir.py":
            continue
        text = p.read_text(encoding="utf-8")
        found += [f"{rel(p)}: {name}" for name in RUN_FILES if f'"{name}"' in text or f"'{name}'" in text]
        found += [f"{rel(p)}: {m.group(0)}" for m in ATTR_USE.finditer(text)]
    assert found == []


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_tests_and_benches_import_no_private_names(folder):
    private = [f"{rel(p)}: {mod}.{name}" for p in sorted((REPO / folder).rglob("*.py"))
               for mod, names in imports(p) if mod.split(".")[0] in PACKAGES
               for name in names if name.startswith("_")]
    assert private == []


def test_the_package_exports_what_it_lists():
    import search
    import search.driver
    import search.merge

    for module in (search, search.driver, search.merge):
        assert [n for n in module.__all__ if not hasattr(module, n)] == []


# The driver knows Optuna and Ray, not merges: a trial's work is its worker's (search.stages.trial_worker).
DRIVER_MAY_IMPORT = ("search.driver", "search.rundir", "objectives.errors", "objectives.schema")


def test_the_driver_imports_no_merge_objective_or_stage_code():
    found = [f"{rel(p)}: {mod}" for p in sources("search/driver") for mod, _ in imports(p)
             if mod.split(".")[0] in PACKAGES + ("mergekit", "lm_eval", "torch", "transformers")
             and not mod.startswith(DRIVER_MAY_IMPORT)]
    assert found == []


def test_test_doubles_are_imported_by_tests_and_benches_only():
    found = [rel(p) for p in sources(*PACKAGES) if rel(p) != "search/driver/testing.py"
             for mod, names in imports(p) if mod == "search.driver.testing" or
             (mod == "search.driver" and "testing" in names)]
    assert found == []

"""The import graph: configuration depends on nothing heavy, `hybrid/` knows nothing of the cluster, the
packages import one way (`hybrid` <- `trainers`, `evaluation` <- `sweeps`) and no module imports itself
back through others. Read from the source (every import, the lazy ones in functions too) and checked in
fresh interpreters for what really loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hybrid", "trainers", "evaluation", "sweeps")
HEAVY = ("torch", "ray", "mlflow", "faiss", "deepspeed", "transformers")
CONFIG_MODULES = ("hybrid.config", "trainers.config", "evaluation.config", "sweeps.config")
# What each package may import of the others.
ALLOWED = {
    "hybrid": set(),
    "trainers": {"hybrid"},
    "evaluation": {"hybrid"},
    "sweeps": {"hybrid", "trainers", "evaluation"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module `path` names in an import statement, wherever the statement is."""
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            named |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return named


def _loaded_by(module: str) -> list[str]:
    """The heavy libraries that importing `module` loads, in a fresh interpreter."""
    code = (
        f"import sys, json, {module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_a_config_module_loads_none_of_the_heavy_runtime(module):
    assert _loaded_by(module) == []


@pytest.mark.parametrize("module", ["sweeps.ratio_search", "evaluation.__main__", "sweeps.compare"])
def test_a_command_line_loads_none_of_the_heavy_runtime_before_its_checks(module):
    """--help, a bad flag or config value, and a finished sweep's refusal answer in a fraction of a second:
    each command imports the heavy stack only once its checks passed."""
    assert _loaded_by(module) == []


def test_hybrid_names_none_of_ray_mlflow_deepspeed_faiss():
    cluster = ("ray", "mlflow", "deepspeed", "faiss")
    named = {
        name: sorted(m for m in _imports(path) if m.split(".")[0] in cluster)
        for name, path in MODULES.items()
        if name.split(".")[0] == "hybrid"
    }
    assert {name: found for name, found in named.items() if found} == {}
    code = "; ".join(f"import {name}" for name in MODULES if name.split(".")[0] == "hybrid")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}; import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {cluster!r}))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_packages_import_one_way():
    wrong = [
        (name, target)
        for name, path in MODULES.items()
        for target in _imports(path)
        if target.split(".")[0] in PACKAGES
        and target.split(".")[0] != name.split(".")[0]
        and target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    ]
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle found by a depth-first walk, as the path that closes it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_module_imports_itself_back():
    graph = {name: {t for t in _imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    assert _cycles(graph) == []


def test_the_checks_can_fail(tmp_path):
    """A lazy import that closes a loop is a cycle; torch behind hybrid.model is seen as heavy."""
    (tmp_path / "a.py").write_text("def f():\n    from b import g\n")
    (tmp_path / "b.py").write_text("from a import f\n")
    graph = {m: _imports(tmp_path / f"{m}.py") & {"a", "b"} for m in ("a", "b")}
    assert _cycles(graph) == [["a", "b", "a"]]
    assert "torch" in _loaded_by("hybrid.model")

"""The layers hold: no import cycle, the import contract kept, the CLI light.

`lint-imports` (the contract in pyproject.toml) also runs in .ci/run; it runs here too
so that anyone's test run catches an import that goes the wrong way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _runtime_cycles() -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan), counting runtime imports only."""
    graph = grimp.build_graph("mirakl_cancel", exclude_type_checking_imports=True,
                              cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in edges.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    # A package's __init__ re-exporting its children is not a cycle between layers.
    return [g for g in groups if not any(m == "mirakl_cancel" or m.endswith(".simulator")
                                         for m in g)]


def test_no_import_cycle() -> None:
    assert _runtime_cycles() == []


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_import_contract_is_kept() -> None:
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("argv", [[], ["status", "--help"], ["run", "--help"],
                                  ["reconcile", "--help"], ["--help"]])
def test_cli_commands_do_not_load_the_simulator(argv: list[str]) -> None:
    # In a fresh interpreter: this process has long imported both.
    code = f"""
import sys
import mirakl_cancel.cli as cli
if {argv!r}:
    try:
        cli.main({argv!r})
    except SystemExit:
        pass
loaded = sorted(m for m in ("mirakl_cancel.simulator", "aiohttp.web") if m in sys.modules)
print("LOADED", loaded, file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "LOADED []" in done.stderr, done.stderr


@pytest.mark.parametrize("argv", [["demo", "--help"], ["simulator", "--help"]])
def test_simulator_commands_still_have_their_options(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "mirakl_cancel.cli", *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "--time-scale" in done.stdout


def _layer_names(layers: list[str]) -> set[str]:
    """The module names a `layers` list mentions (`a : b`, `a | b`, `(a)` all count)."""
    return {name.strip().strip("()") for layer in layers
            for name in layer.replace("|", ":").split(":")}


def test_every_module_is_in_a_layer() -> None:
    # A module left out of the contract would be free to import upward unnoticed.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["importlinter"]["contracts"]
    listed = {f"{container}.{name}" for contract in contracts if contract["type"] == "layers"
              for container in contract["containers"]
              for name in _layer_names(contract["layers"])}
    graph = grimp.build_graph("mirakl_cancel", cache_dir=None)
    unlisted = [module for module in sorted(graph.modules)
                if module != "mirakl_cancel" and module not in listed
                and not module.startswith("mirakl_cancel.simulator.")]
    assert unlisted == [], f"add to [tool.importlinter] in pyproject.toml: {unlisted}"

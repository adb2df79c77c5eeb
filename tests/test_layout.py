"""The package's layout rules, read from the source: no import cycles; the app never imports cli/, study/ or
launch/ (process orchestration), nor test tooling.

The graph has one node per module of ``fedtalos/`` and an edge A → B for every ``import`` statement in A that names
B, wherever it stands: at the top, under ``if TYPE_CHECKING:`` or inside a function. A function-level import only
delays a cycle to call time, it does not remove it, so it counts. ``from P import name`` is an edge to the module
``P.name`` when there is one, else to ``P`` itself; importing ``P.M`` is not counted as importing ``P``'s
``__init__`` (which would make every package that re-exports its modules a cycle).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from fedtalos.tracking.hooks import FAULT_INJECTION_ENV

PACKAGE = "fedtalos"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# The app's one import of testing/: ``tracking.hooks.run_hooks`` imports fault injection inside the function, only
# when FEDTALOS_KILL_AT is set. It is the plug-in point the layout allows: the only edge into testing/ from outside
# it (and, like every edge, part of the cycle search).
FAULT_INJECTION_EDGE = ("fedtalos.tracking.hooks", "fedtalos.testing.faults")
# ``fedtalos demo`` writes the generated stand-in data for a user, inside its command function (so listing the
# commands loads no test tooling, as the test below checks).
DEMO_DATA_EDGE = ("fedtalos.cli.demo", "fedtalos.testing.synthetic")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Module name → source file, for every module of the package."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` (at ``path``) imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    sources = modules()
    known = set(sources)
    return {name: imports_of(name, path, known) for name, path in sources.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    # a top-level import, a module named in `from P import M`, and an import inside a function
    assert "fedtalos.config" in graph["fedtalos.study.grid"]
    assert "fedtalos.federation.protocol" in graph["fedtalos.federation.train_round"]
    assert "fedtalos.federation.cohort" in graph["fedtalos.study.agreement"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == [], "modules that import each other (perhaps through others)"


def test_only_tests_benchmarks_the_fault_injection_plug_in_and_the_demo_import_testing():
    testing = f"{PACKAGE}.testing"
    graph = import_graph()
    edges = {(a, m) for a, imported in graph.items() if not inside(a, testing) for m in imported if inside(m, testing)}
    assert edges <= {FAULT_INJECTION_EDGE, DEMO_DATA_EDGE}


def test_importing_the_app_and_the_commands_loads_no_test_tooling():
    code = (
        "import sys, fedtalos.server_app, fedtalos.client_app, fedtalos.central.trainer, fedtalos.cli.main; "
        "print(sorted(m for m in sys.modules if m.startswith('fedtalos.testing')))"
    )
    env = {k: v for k, v in os.environ.items() if k != FAULT_INJECTION_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_only_cli_imports_cli_only_study_and_cli_import_study_and_the_app_never_launches_runs():
    graph = import_graph()
    cli, study, launch = f"{PACKAGE}.cli", f"{PACKAGE}.study", f"{PACKAGE}.launch"
    rules = {
        cli: (cli,),
        study: (study, cli),
        # server_app checks `simulation_problems` (what Flower's simulation cannot run) before a run starts
        launch: (launch, cli, study, f"{PACKAGE}.testing", f"{PACKAGE}.server_app"),
    }
    violations = set()
    for importer, imported in graph.items():
        for package, allowed in rules.items():
            if any(inside(m, package) for m in imported) and not any(inside(importer, a) for a in allowed):
                violations.add((importer, package))
    assert violations == set()

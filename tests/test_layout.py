"""The package's structure, read from its source: no import circle, a run's status named in one
module, the report light to import, functions a reader finishes."""

import ast
import subprocess
import sys
from pathlib import Path

from mlp_lab.datasets import PROJECT_DIR
from mlp_lab.runs import Status

PACKAGES = ("mlp_lab", "hydra_plugins", "benchmarks")
SOURCES = {
    ".".join(path.relative_to(PROJECT_DIR).with_suffix("").parts).removesuffix(".__init__"): path
    for package in PACKAGES
    for path in sorted((PROJECT_DIR / package).rglob("*.py"))
}


def imported(module: str, path: Path) -> set[str]:
    """The project's modules that `module` imports anywhere in its file, in functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in node.names
            ]
        else:
            continue
        found |= {name for name in names if name in SOURCES and name != module}
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as the path that closes it (a depth-first search's back edges)."""
    found, state = [], dict.fromkeys(graph, "new")

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state[nxt] == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif state[nxt] == "new":
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in graph:
        if state[node] == "new":
            visit(node, [node])
    return found


def test_the_walk_finds_deferred_imports_and_circles():
    graph = {m: imported(m, p) for m, p in SOURCES.items()}
    # mlp_lab.checkpoints imports mlp_lab.module only inside load_model, hydra_plugins' sweeper
    # mlp_lab.sweeps.search only inside its class: both are seen.
    assert "mlp_lab.module" in graph["mlp_lab.checkpoints"]
    assert "mlp_lab.sweeps.search" in graph["hydra_plugins.mlp_lab_sweeper"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_circle_among_the_packages():
    graph = {m: imported(m, p) for m, p in SOURCES.items()}
    assert circles(graph) == []


def test_a_runs_status_is_written_in_runs_py_alone():
    words = {str(s) for s in Status}
    found = []
    for module, path in SOURCES.items():
        if module == "mlp_lab.runs" or not module.startswith(("mlp_lab", "hydra_plugins")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in words:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert found == []


def test_no_function_is_longer_than_a_reader_finishes():
    long = []
    for module, path in SOURCES.items():
        if not module.startswith(("mlp_lab", "hydra_plugins")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def test_no_module_is_longer_than_one_job_needs():
    lines = {m: len(p.read_text().splitlines()) for m, p in SOURCES.items()}
    long = [f"{m}: {n} lines" for m, n in lines.items() if m.startswith("mlp_lab") and n > 400]
    assert long == []


def test_the_report_imports_neither_optuna_nor_lightning():
    # A fresh interpreter: this one has imported both.
    imports = "import mlp_lab.report.__main__, sys"
    code = f"{imports}; print('optuna' in sys.modules, 'lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stderr


def layer_crossings(graph: dict[str, set[str]], layer: str) -> set[tuple[str, str]]:
    """Imports of `layer`'s modules from modules outside it: the wrong way, up."""

    def inside(name: str) -> bool:
        return name == layer or name.startswith(f"{layer}.")

    return {(m, n) for m, names in graph.items() for n in names if inside(n) and not inside(m)}


# The commands stand above every layer: `python -m mlp_lab.resume` resumes a sweep's runs,
# `python -m mlp_lab.lab` trains the lab's runs and writes its report.
COMMANDS = ("mlp_lab.resume", "mlp_lab.lab")


def test_imports_go_one_way_between_the_layers():
    """The training core imports neither the many-runs layer (mlp_lab.sweeps) nor the report
    (mlp_lab.report), and those two import each other in neither direction."""
    graph = {m: imported(m, p) for m, p in SOURCES.items() if m not in COMMANDS}
    assert {n for n in graph if n.startswith("mlp_lab.report.")} >= {
        "mlp_lab.report.studies", "mlp_lab.report.findings", "mlp_lab.report.write",
    }  # fmt: skip
    assert {"mlp_lab.sweeps.local", "mlp_lab.sweeps.search"} <= graph.keys()
    assert layer_crossings(graph, "mlp_lab.report") == set()
    # hydra_plugins names the launchers and the sweeper where Hydra looks for them.
    plugins = {m: n for m, n in graph.items() if not m.startswith("hydra_plugins")}
    assert layer_crossings(plugins, "mlp_lab.sweeps") == set()
    # The check sees one planted the wrong way.
    planted = graph | {"mlp_lab.fit": graph["mlp_lab.fit"] | {"mlp_lab.report.studies"}}
    assert layer_crossings(planted, "mlp_lab.report") == {("mlp_lab.fit", "mlp_lab.report.studies")}

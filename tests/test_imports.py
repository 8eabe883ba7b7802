"""The package's import graph: arrows point one way (cli -> run/report/interop -> inspection/loop/store ->
model/config/optim/data/layers -> files/errors/schema), with no cycle, not even behind a function-local import."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"

# Lower tiers never import higher ones. Modules not listed (new ones) are held to the no-cycle rule only.
TIERS = {
    0: ("errors", "files", "schema", "extras", "speed", "device"),
    1: ("layers", "native", "model", "config", "optim", "data", "augment", "metrics", "plots"),
    2: ("inspection", "loop", "store", "callbacks"),
    3: ("run", "report", "interop", "compare", "sweep", "tboard"),
    4: ("cli", "__main__"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tier(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else ""
    if top.startswith("cli_"):
        return 4
    return next((t for t, names in TIERS.items() if top in names), None)


def imports(path: Path) -> set[str]:
    """Every cnnlab module ``path`` imports, at the top or inside a function (``from cnnlab import x`` counts x)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cnnlab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("cnnlab"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                              or (SRC.parent / sub.replace(".", "/")).is_dir() else base)
    return found - {"cnnlab"}


GRAPH = {module_name(p): imports(p) - {module_name(p)} for p in SRC.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if tier(m) is not None))
def test_imports_point_down_the_tiers(module):
    upward = sorted(dep for dep in GRAPH[module] if tier(dep) is not None and tier(dep) > tier(module)
                    and not dep.startswith(module + "."))
    assert upward == [], f"{module} (tier {tier(module)}) imports higher tiers: {upward}"


def test_no_import_cycle():
    def parents(module):  # importing a.b.c runs a.b's __init__ first
        parts = module.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts))}

    edges = {m: {d for dep in deps for d in {dep} | parents(dep) if d in GRAPH and d != m and not m.startswith(d + ".")}
             for m, deps in GRAPH.items()}
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for dep in sorted(edges[m]):
            visit(dep)
        stack.pop()
        done.add(m)

    for module in sorted(edges):
        visit(module)


@pytest.mark.parametrize("module, absent", [
    ("cnnlab.inspection.activations", ("matplotlib", "cnnlab.loop", "cnnlab.run")),
    ("cnnlab.model", ("cnnlab.run", "cnnlab.cli", "cnnlab.loop", "cnnlab.callbacks", "cnnlab.store", "matplotlib")),
    ("cnnlab.config", ("cnnlab.run", "cnnlab.cli", "cnnlab.loop", "matplotlib")),
    ("cnnlab.layers", ("cnnlab.model", "cnnlab.config", "cnnlab.run", "matplotlib")),
    ("cnnlab.schema", ("torch", "numpy", "cnnlab.config")),
])
def test_what_a_module_brings_in_when_imported_alone(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({absent!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

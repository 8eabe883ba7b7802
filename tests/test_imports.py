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
    0: ("errors", "files", "schema", "extras", "cpu", "speed", "lazy", "device"),
    1: ("layers", "native", "model", "config", "optim", "optim_specs", "data", "augment", "metrics", "plots",
        "numpy_model"),
    2: ("inspection", "loop", "store", "callbacks", "runfolder"),
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
    """Every cnnlab module ``path`` imports, at the top or inside a function (``from cnnlab import x`` counts x),
    or names in a ``lazy_module("cnnlab...")`` call (imported later, but an arrow all the same)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_module":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant) and a.value.startswith("cnnlab")}
        elif isinstance(node, ast.Import):
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
    ("cnnlab.config", ("cnnlab.run", "cnnlab.cli", "cnnlab.loop", "cnnlab.optim.", "matplotlib", "torch")),
    ("cnnlab.layers", ("cnnlab.model", "cnnlab.config", "cnnlab.run", "cnnlab.native", "matplotlib", "torch")),
    ("cnnlab.layers.table", ("torch",)),
    ("cnnlab.optim_specs", ("torch",)),
    ("cnnlab.schema", ("torch", "numpy", "cnnlab.config")),
    ("cnnlab.runfolder", ("torch",)),  # evaluate and patterns draw from kept results without torch
    ("cnnlab.numpy_model", ("torch", "matplotlib")),  # and compute what is not kept without it
    ("cnnlab.native", ("torch",)),  # its torch side (cnnlab.native.autograd) comes on first use
    ("cnnlab.report", ("torch",)),
    ("cnnlab.inspection.shared", ("torch",)),
])
def test_what_a_module_brings_in_when_imported_alone(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({absent!r})))"
    assert fresh_python(code).stdout.strip() == "[]"


def fresh_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (nothing imported yet) and return what it printed."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)


@pytest.mark.parametrize("argv", [["summary", "--preset", "seed"], ["config", "--preset", "fast"]])
def test_commands_that_only_describe_a_config_import_no_torch(argv):
    """``cnnlab summary`` and ``cnnlab config`` check the config and print; torch (1-3 s to import) stays out."""
    code = ("import sys; from cnnlab.cli import main; code = main(sys.argv[1:]); "
            "print('torch:', sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'cnnlab.optim')) "
            "and m != 'cnnlab.optim_specs'), 'exit:', code, file=sys.stderr)")
    done = fresh_python(code, *argv)
    assert done.stderr.strip().splitlines()[-1] == "torch: [] exit: 0"
    assert "Conv2D" in done.stdout if argv[0] == "summary" else "[model]" in done.stdout


def test_a_lazy_module_is_imported_on_first_use():
    code = ("import sys; from cnnlab.lazy import lazy_module; m = lazy_module('colorsys'); "
            "before = 'colorsys' in sys.modules; value = m.rgb_to_hsv(1.0, 0.0, 0.0); "
            "print(before, 'colorsys' in sys.modules, value, repr(m))")
    assert fresh_python(code).stdout.strip() == "False True (0.0, 1.0, 1.0) <lazy module 'colorsys' (imported)>"


def test_training_and_resuming_with_a_keras_optimizer_never_imports_dynamo(tmp_path):
    """torch's Optimizer imports torch._dynamo (about 1 s) on its first zero_grad/state_dict; cnnlab's own
    optimizers call those methods without the dynamo wrapper, and the state still round-trips."""
    code = ("import sys, cnnlab; run = cnnlab.train('tiny', out=sys.argv[1], epochs=1, echo=None); "
            "cnnlab.resume(sys.argv[1], 1, echo=None); "
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')), "
            "len(cnnlab.load(sys.argv[1]).history))")
    assert fresh_python(code, str(tmp_path / "run")).stdout.strip() == "[] 2"

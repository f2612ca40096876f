"""The architecture's rules, checked on the source with ast (docs/architecture.md).

- each package imports only what the "may import" column of docs/architecture.md allows;
- sdml/ and branch/ (the two parallel paths) never import each other;
- only distributed/, tuning/ and serving/ import ray; only tracking/ imports mlflow;
- no module imports another module's private (_underscored) names;
- the package's own modules import each other without cycles;
- function-local imports of the package's own modules only where listed (and why) below.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "scalable_xmr"

# Function-local imports of our own modules that are deliberate: (importer prefix, imported) -> why.
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ("scalable_xmr.cli.", "scalable_xmr."): "a command imports its job only when it runs, so `xmr --help` "
    "and flag errors answer at once, without importing torch, Ray or MLflow",
    ("scalable_xmr.sdml.job", "scalable_xmr.tracking"): "matplotlib loads only when a run is plotted",
    ("scalable_xmr.tuning.results", "scalable_xmr.tracking"): "matplotlib loads only when a "
    "sweep is plotted",
}


def local_import_allowed(importer: str, imported: str) -> bool:
    return any(importer.startswith(a) and imported.startswith(b) for a, b in LOCAL_IMPORTS_ALLOWED)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PKG.rglob("*.py"))}


def imports(tree: ast.Module, name: str, top_level_only: bool = False):
    """(imported module, names, line, at top level) of every import in ``tree``. Imports in a
    top-level ``if TYPE_CHECKING:`` block count as top level (what a lazy package exports)."""
    top = {id(n) for n in tree.body}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            top.update(id(n) for n in node.body)
    for node in ast.walk(tree):
        if top_level_only and id(node) not in top:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package(name) else 0)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            yield base, [a.name for a in node.names], node.lineno, id(node) in top


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def area(name: str) -> str:
    """The first package level under scalable_xmr (``sdml``, ``branch``, ``config``...)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def own_target(mods: dict, imported: str, names: list[str]) -> list[str]:
    """The package's modules an import statement loads (a name may itself be a submodule)."""
    if not imported.startswith("scalable_xmr"):
        return []
    out = [imported] if imported in mods else []
    out += [f"{imported}.{n}" for n in names if f"{imported}.{n}" in mods]
    return out


def allowed_imports() -> dict[str, set[str]]:
    """The "may import" column of docs/architecture.md: package -> the packages it may import."""
    rows = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "package":
            may = cells[2]
            rows[cells[0].strip("`")] = {"*"} if may == "every package" else (
                set() if may == "--" else {p.strip() for p in may.split(",")})
    return rows


def test_packages_import_only_what_docs_architecture_allows():
    allowed = allowed_imports()
    assert {"sdml", "branch", "store", "tracking", "distributed", "tuning", "cli"} <= set(allowed)
    bad = []
    for name, tree in modules().items():
        here = area(name)
        if not here:
            continue  # the package's own __init__ (its version)
        assert here in allowed, f"{name}: package {here!r} is not in docs/architecture.md"
        for imported, _, line, _ in imports(tree, name):
            there = area(imported) if imported.startswith("scalable_xmr") else None
            if there and there != here and "*" not in allowed[here] and there not in allowed[here]:
                bad.append(f"{name}:{line} imports {imported} ({here} may import: {sorted(allowed[here])})")
    assert not bad, bad


def test_the_two_paths_never_import_each_other():
    bad = []
    for name, tree in modules().items():
        for imported, _, line, _ in imports(tree, name):
            pair = (area(name), area(imported))
            if pair in (("sdml", "branch"), ("branch", "sdml")) and imported.startswith("scalable_xmr"):
                bad.append(f"{name}:{line} imports {imported}")
    assert not bad, bad


def test_ray_only_in_distributed_tuning_serving_mlflow_only_in_tracking():
    homes = {"ray": {"distributed", "tuning", "serving"}, "mlflow": {"tracking"}}
    bad = []
    for name, tree in modules().items():
        for imported, _, line, _ in imports(tree, name):
            lib = imported.split(".")[0]
            if lib in homes and area(name) not in homes[lib]:
                bad.append(f"{name}:{line} imports {imported}")
    assert not bad, bad


def test_no_private_names_across_modules():
    bad = []
    for name, tree in modules().items():
        for imported, names, line, _ in imports(tree, name):
            if imported.startswith("scalable_xmr") and imported != name:
                bad += [f"{name}:{line} imports {imported}.{n}" for n in names if n.startswith("_")
                        and not n.startswith("__")]
    assert not bad, bad


def test_no_import_cycles():
    mods = modules()
    graph = defaultdict(set)
    for name, tree in mods.items():
        for imported, names, _, top in imports(tree, name):
            if top:
                graph[name].update(t for t in own_target(mods, imported, names) if t != name)
    # A package's __init__ importing its own submodules is how it re-exports them, not a cycle.
    for name in list(graph):
        graph[name] = {t for t in graph[name] if not (is_package(name) and t.startswith(name + "."))}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(mods):
        if n not in state:
            visit(n)
    assert not cycles, cycles


def test_function_local_imports_of_own_modules_are_deliberate():
    bad = []
    for name, tree in modules().items():
        for imported, _, line, top in imports(tree, name):
            if not top and imported.startswith("scalable_xmr") and not local_import_allowed(name, imported):
                bad.append(f"{name}:{line} imports {imported} inside a function")
    assert not bad, f"{len(bad)} local imports:\n" + "\n".join(bad)


def test_the_checks_see_what_they_look_for():
    """The walker finds top-level, from- and function-local imports, and the map forbids a
    cross-path import, so the rules above cannot pass vacuously."""
    tree = ast.parse("import ray\nfrom scalable_xmr.branch.job import _x\n"
                     "def f():\n    from scalable_xmr.sdml import trainer\n")
    found = list(imports(tree, "scalable_xmr.sdml.fake"))
    assert ("ray", [], 1, True) in found
    assert ("scalable_xmr.branch.job", ["_x"], 2, True) in found
    assert ("scalable_xmr.sdml", ["trainer"], 4, False) in found
    allowed = allowed_imports()
    assert "branch" not in allowed["sdml"] and "sdml" not in allowed["branch"]
    assert "tracking" not in allowed["store"] and allowed["cli"] == {"*"}

"""The checker behind tests/test_architecture.py: a source tree's imports, read with ast.

Every function takes a source tree (``load(root)``) or import edges, so the test runs each rule on
this repository and on tiny fake trees that break it. The rules' lists live in the test.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

PACKAGE = "scalable_xmr"
ROOT_AREA = "__init__"  # the root package itself: its version and its lazily imported names
LAZY_TABLE = "_LAZY_ATTRIBUTES"  # in scalable_xmr/__init__.py: name -> the module that defines it


class Import(NamedTuple):
    module: str  # the module the statement names (relative imports resolved)
    names: list[str]  # what `from ... import` takes; [] for `import x`
    line: int
    top: bool  # at module level (a top-level `if TYPE_CHECKING:` block included)
    typing_only: bool = False  # in that block: what a lazy package exports, never run


class Source(NamedTuple):
    """A source tree: ``root / PACKAGE`` parsed, and the root package's lazy-attribute table."""

    mods: dict[str, ast.Module]
    packages: set[str]  # the modules that are a package's __init__
    lazy: dict[str, str]  # name -> the module the root package imports it from on first use


def load(root: Path) -> Source:
    mods, packages = {}, set()
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            packages.add(".".join(parts))
        mods[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return Source(mods, packages, lazy_attributes(mods.get(PACKAGE)))


def lazy_attributes(init: ast.Module | None) -> dict[str, str]:
    """The root ``__init__``'s ``_LAZY_ATTRIBUTES`` literal; a ``__getattr__`` without one is an
    import this test could not see, so it fails."""
    if init is None:
        return {}
    for node in init.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and getattr(target, "id", None) == LAZY_TABLE:
            return ast.literal_eval(node.value)
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in init.body), (
        f"{PACKAGE}/__init__.py has a __getattr__ but no {LAZY_TABLE} table saying what it imports")
    return {}


def imports(tree: ast.Module, name: str, is_package: bool = False):
    """Every import in ``tree`` (the module ``name``), as :class:`Import`."""
    top, typing_only = {id(n) for n in tree.body}, set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            typing_only.update(id(n) for n in node.body)
    top |= typing_only
    for node in ast.walk(tree):
        where = (node.lineno, id(node) in top, id(node) in typing_only) if hasattr(node, "lineno") else ()
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, [], *where)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = name.split(".")
                pkg = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            yield Import(base, [a.name for a in node.names], *where)


def imports_of(src: Source, name: str):
    return imports(src.mods[name], name, name in src.packages)


def is_own(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def area(name: str) -> str:
    """The first package level under scalable_xmr (``sdml``, ``branch``, ``config``...)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ROOT_AREA


def import_areas(src: Source, imp: Import) -> set[str]:
    """The areas an import reaches. ``from scalable_xmr import x`` reaches x's own area when x is a
    module or a lazy attribute of the root package, and the root otherwise (``__version__``)."""
    if not is_own(imp.module):
        return set()
    if imp.module != PACKAGE:
        return {area(imp.module)}
    reached = {ROOT_AREA} if not imp.names else set()
    for n in imp.names:
        if f"{PACKAGE}.{n}" in src.mods:
            reached.add(n)
        else:
            reached.add(area(src.lazy[n]) if n in src.lazy else ROOT_AREA)
    return reached


def own_target(src: Source, imp: Import) -> list[str]:
    """The package's modules an import statement loads (a name may itself be a submodule)."""
    if not is_own(imp.module):
        return []
    out = [imp.module] if imp.module in src.mods else []
    return out + [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in src.mods]


def imported_names(imp: Import) -> list[str]:
    """What a statement takes, dotted: ``from a.b import c, d`` -> ``a.b.c``, ``a.b.d``."""
    return [f"{imp.module}.{n}" for n in imp.names] if imp.names else [imp.module]


def allowed_imports(doc: Path) -> dict[str, set[str]]:
    """The "may import" column of docs/architecture.md: package -> the packages it may import."""
    rows = {}
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "package":
            may = cells[2]
            rows[cells[0].strip("`")] = {"*"} if may == "every package" else (
                set() if may == "--" else {p.strip() for p in may.split(",")})
    return rows


def area_violations(src: Source, allowed: dict[str, set[str]]) -> list[str]:
    """Imports that leave what the importer's area may import (the root's lazy table included)."""
    bad = []
    for name in src.mods:
        here = area(name)
        if here not in allowed:
            bad.append(f"{name}: package {here!r} is not in docs/architecture.md")
            continue
        found = list(imports_of(src, name))
        if name == PACKAGE:  # what its __getattr__ imports on first use
            found += [Import(module, [], 0, False) for module in src.lazy.values()]
        for imp in found:
            for there in sorted(import_areas(src, imp) - {here}):
                if "*" not in allowed[here] and there not in allowed[here]:
                    bad.append(f"{name}:{imp.line} imports {', '.join(imported_names(imp))} (area "
                               f"{there}; {here} may import: {sorted(allowed[here])})")
    return bad


def cross_path_imports(src: Source) -> list[str]:
    bad, paths = [], {"sdml", "branch"}
    for name in src.mods:
        for imp in imports_of(src, name):
            if area(name) in paths and (paths - {area(name)}) & import_areas(src, imp):
                bad.append(f"{name}:{imp.line} imports {', '.join(imported_names(imp))}")
    return bad


def import_graph(src: Source) -> dict[str, set[str]]:
    """Module -> the package's modules its top-level imports load. A package's ``__init__``
    importing its own submodules is an edge like any other: importing the package runs it."""
    graph = defaultdict(set)
    for name in src.mods:
        for imp in imports_of(src, name):
            if imp.top:
                graph[name].update(t for t in own_target(src, imp) if t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def libraries_loaded(src: Source, module: str) -> set[str]:
    """The third-party modules (dotted, as imported) that importing ``module`` loads: through its
    parent packages' ``__init__``s and every module of ours they import at the top, transitively."""
    parts = module.split(".")
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    seen, libs = set(), set()
    while todo:
        m = todo.pop()
        if m in seen or m not in src.mods:
            continue
        seen.add(m)
        for imp in imports_of(src, m):
            if imp.top and not imp.typing_only:
                if is_own(imp.module):
                    for t in own_target(src, imp):
                        tp = t.split(".")
                        todo += [".".join(tp[:i]) for i in range(2, len(tp) + 1)]
                elif imp.module:
                    libs |= {imp.module} | {f"{imp.module}.{n}" for n in imp.names}
    return libs


def loads_heavy(libs: set[str], heavy: tuple[str, ...]) -> bool:
    return any(m == h or m.startswith(h + ".") for m in libs for h in heavy)


def local_import_violations(src: Source, allowed: dict[tuple[str, str], str],
                            heavy: tuple[str, ...]) -> list[str]:
    """Function-local imports of our own modules not in ``allowed``; listed ones that load none of
    ``heavy`` (they cost `xmr --help` nothing at the top); listed ones that no longer exist."""
    bad, used = [], set()
    for name in src.mods:
        for imp in imports_of(src, name):
            if imp.top or not is_own(imp.module):
                continue
            for imported in imported_names(imp):
                key = (name, imported)
                if key not in allowed:
                    bad.append(f"{name}:{imp.line} imports {imported} inside a function, unlisted")
                    continue
                used.add(key)
                target = imported if imported in src.mods else imp.module
                if not loads_heavy(libraries_loaded(src, target), heavy):
                    bad.append(f"{name}:{imp.line} imports {imported} inside a function, but it "
                               f"loads none of {', '.join(heavy)}: import it at the top")
    bad += [f"{name}: listed local import of {imported} is gone" for name, imported in allowed
            if (name, imported) not in used]
    return bad


def mirror_gaps(root: Path, exempt: dict[str, str], own_dirs: dict[str, str]) -> list[str]:
    """Packages without a tests/<package>/ holding a test_*.py, tests/ folders that mirror no
    package, and exemptions that no longer apply."""
    packages = {p.parent.name for p in (root / PACKAGE).glob("*/__init__.py")}
    tested = {d.name for d in (root / "tests").iterdir() if d.is_dir() and any(d.glob("test_*.py"))}
    folders = {d.name for d in (root / "tests").iterdir() if d.is_dir() and d.name != "__pycache__"}
    bad = [f"scalable_xmr/{p}/ has no tests/{p}/test_*.py" for p in sorted(packages - tested - set(exempt))]
    bad += [f"tests/{d}/ mirrors no package" for d in sorted(folders - packages - set(own_dirs))]
    bad += [f"exemption of {p} is stale" for p in sorted(set(exempt) - (packages - tested))]
    return bad

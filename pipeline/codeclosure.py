"""The code a stage runs, computed: the static import closure of its module inside the facepipe namespace.

Every `import` / `from ... import` of a module's source (function-level imports included, `if TYPE_CHECKING:`
blocks excluded) that names a facepipe module is followed, with the package `__init__` files that importing
it executes. Sources are read, never imported, so computing the closure loads no heavy library. A hand-kept
list of modules misses the one you edit; this cannot, as long as the code imports what it uses.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

NAMESPACE = "facepipe"


@lru_cache(maxsize=None)
def _package_root(top: str) -> Path | None:
    """The folder of facepipe.<top> (setuptools package-dir maps it onto the repo's top-level folder)."""
    try:
        spec = importlib.util.find_spec(f"{NAMESPACE}.{top}")  # imports only the facepipe namespace package
    except (ImportError, ValueError):
        return None
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    return Path(locations[0]) if locations else None


def module_file(name: str) -> Path | None:
    """The source file of a facepipe module or package (its __init__.py), None when there is none."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != NAMESPACE:
        return None
    root = _package_root(parts[1])
    if root is None:
        return None
    base = root.joinpath(*parts[2:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute dotted names this source imports (for `from X import y`: X, and X.y when y is a module)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)] if child.level > 1 else anchor
                    base = ".".join(anchor + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names if a.name != "*")
            visit(child)

    visit(tree)
    return found


def import_closure(*roots: str) -> list[str]:
    """Every facepipe module the given modules import, directly or through one another (roots included),
    with the packages whose __init__ runs on the way; sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith(NAMESPACE + "."):
            continue
        path = module_file(name)
        if path is None:  # `from pkg import function`: pkg.function is not a module
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # parent packages' __init__
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue  # its hash (or "unavailable") still enters code_version
        todo.extend(_imported_names(tree, name, path.name == "__init__.py") - seen)
    return sorted(seen)

"""Every third-party module facepipe imports is declared in pyproject.toml: a base dependency when any module
imports it at load time, else a base dependency or an extra (imported lazily, inside the function that needs
it). The lock pins every declared distribution. (The base install itself is exercised by
tests/stages/test_base_install.py.)"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "stages", "models", "export")

# import name -> distribution, for the modules whose names differ or that cannot be installed here
DISTRIBUTION_OF = {
    "cv2": "opencv-python-headless", "yaml": "pyyaml", "torch_tensorrt": "torch-tensorrt",
    "huggingface_hub": "huggingface-hub",
}
# imported only where a declared dependency provides it: typer < 0.26 depends on click and raises its exceptions
PROVIDED_BY = {"click": "typer"}
# installed by a recipe, not by an extra (insightface's wheel requires opencv-python, a second cv2 beside
# opencv-python-headless: `make insightface` installs it --no-deps); imported lazily and pinned in the lock
INSTALLED_BY_RECIPE = {"insightface": "make insightface"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0])


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {_requirement_name(r) for r in project["dependencies"]}
    extras = {k: {_requirement_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    return base, extras


def _imports() -> dict[str, dict[str, list[str]]]:
    """{top-level module: {"eager": [file:line], "lazy": [file:line]}} of the third-party imports."""
    found: dict[str, dict[str, list[str]]] = {}

    def visit(node, where: str, depth: int, guarded: bool):
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "facepipe":
                    continue
                kind = "eager" if depth == 0 and not guarded else "lazy"
                found.setdefault(top, {"eager": [], "lazy": []})[kind].append(f"{where}:{child.lineno}")
            inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            handler = isinstance(child, ast.ExceptHandler)
            visit(child, where, depth + inner, guarded or handler)

    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            visit(tree, str(path.relative_to(REPO)), 0, False)
    return found


def test_the_scan_sees_the_imports_it_must_judge():
    found = _imports()
    assert {"torch", "numpy", "typer", "onnx", "cv2"} <= set(found), sorted(found)
    assert found["openvino"]["lazy"] and not found["openvino"]["eager"], found["openvino"]


def test_every_third_party_import_is_declared():
    base, extras = _declared()
    every_extra = set().union(*extras.values())
    undeclared, eager_extras = [], []
    for module, where in sorted(_imports().items()):
        dist = _norm(DISTRIBUTION_OF.get(module, module))
        if module in INSTALLED_BY_RECIPE:
            assert not where["eager"], f"{module} is optional ({INSTALLED_BY_RECIPE[module]}): import it lazily"
            continue
        if module in PROVIDED_BY:
            assert _norm(PROVIDED_BY[module]) in base, module
            assert not where["eager"], f"{module} may be absent: import it only where its provider lacks it"
            continue
        if dist not in base and dist not in every_extra:
            undeclared.append(f"{module} ({dist}) at {', '.join(where['eager'] + where['lazy'])}")
        elif dist not in base and where["eager"]:
            eager_extras.append(f"{module} (extra only) imported at load time at {', '.join(where['eager'])}")
    assert not undeclared, "imported but declared nowhere in pyproject.toml: " + "; ".join(undeclared)
    assert not eager_extras, "; ".join(eager_extras)


def test_the_lock_pins_every_declared_distribution():
    base, extras = _declared()
    lock = (REPO / "constraints.txt").read_text().splitlines()
    pinned = {_requirement_name(line) for line in lock if "==" in line and not line.startswith("#")}
    # the trt extra cannot be installed on a machine without NVIDIA's index (PyPI's tensorrt is a placeholder)
    wanted = base | set().union(*(v for k, v in extras.items() if k != "trt")) | set(INSTALLED_BY_RECIPE)
    missing = sorted(wanted - pinned)
    assert not missing, f"constraints.txt lacks {missing}: refresh it with `make lock`"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s]+", line) for line in lock
               if line.strip() and not line.startswith("#")), "constraints.txt holds only exact pins"

"""The house's shape as a contract: every facepipe import (load-time and function-level, read from the sources
with ast) goes to a lower layer or stays inside its own group; models/ uses nothing of pipeline/ beyond errors
and the registry; stages/ only declare (no classes, nothing imports them but the commands)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from facepipe.pipeline.codeclosure import _imported_names, module_file

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"pipeline": "facepipe.pipeline", "stages": "facepipe.stages", "models": "facepipe.models",
            "export": "facepipe.export"}

# Longest prefix wins. A module may import from a lower layer, or from its own group (same prefix entry).
LAYERS = {
    "facepipe.pipeline.__init__": 0, "facepipe.pipeline.errors": 0,
    "facepipe.pipeline.registry": 1, "facepipe.pipeline.io": 1, "facepipe.pipeline.progress": 1, "facepipe.pipeline.codeclosure": 1,
    "facepipe.pipeline.weights": 1, "facepipe.pipeline.eval.metrics": 1,  # pure math
    "facepipe.models": 2,
    "facepipe.pipeline.device": 2, "facepipe.pipeline.config": 2, "facepipe.pipeline.embedder": 2,
    "facepipe.pipeline.assets": 2, "facepipe.pipeline.plots": 2,
    "facepipe.pipeline.manifest": 3,
    "facepipe.pipeline.runner": 4, "facepipe.pipeline.teachers": 4, "facepipe.pipeline.data": 4,
    "facepipe.pipeline.eval": 5,
    "facepipe.pipeline.quant.storage": 5,  # the quantized-model file format: written by quantize, read by export
    "facepipe.pipeline.train": 6, "facepipe.export": 6,
    "facepipe.pipeline.quant": 7, "facepipe.pipeline.bench": 7,
    "facepipe.stages": 8,
    "facepipe.pipeline.commands": 9,
    "facepipe.pipeline.cli": 10,
}
MODELS_MAY_USE = ("facepipe.pipeline.errors", "facepipe.pipeline.registry")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *rel))
            out.append((name[: -len(".__init__")] if name.endswith(".__init__") else name, path))
    return out


def _group(module: str) -> str:
    key = "facepipe.pipeline.__init__" if module == "facepipe.pipeline" else module
    best = max((p for p in LAYERS if key == p or key.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _imports() -> list[tuple[str, str]]:
    """(importer, imported facepipe module) for every import of every source file."""
    pairs = []
    for name, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in sorted(_imported_names(tree, name, path.name == "__init__.py")):
            if target.startswith("facepipe.") and module_file(target) is not None:
                pairs.append((name, target))
    return pairs


def test_every_module_has_a_layer():
    for name, _ in _modules():
        _group(name)


def _upward(pairs) -> list[str]:
    out = []
    for importer, target in pairs:
        gi, gt = _group(importer), _group(target)
        if gi != gt and LAYERS[gt] >= LAYERS[gi]:
            out.append(f"{importer} (layer {LAYERS[gi]}) imports {target} (layer {LAYERS[gt]})")
    return out


def test_each_layer_imports_downward_only():
    upward = _upward(_imports())
    assert not upward, "\n".join(upward)


def test_models_use_nothing_of_the_pipeline_beyond_errors_and_registry():
    bad = [f"{i} imports {t}" for i, t in _imports()
           if i.startswith("facepipe.models") and not t.startswith("facepipe.models")
           and not t.startswith(MODELS_MAY_USE) and t != "facepipe.pipeline"]
    assert not bad, "\n".join(bad)


def test_stages_only_declare():
    for name, path in _modules():
        if not name.startswith("facepipe.stages."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        assert not classes, f"{path}: stage modules declare; {classes} belong in pipeline/"
        assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "SPEC" for t in n.targets)
                   for n in tree.body), f"{path}: no SPEC = register_stage(...)"


@pytest.mark.parametrize("pair", [("facepipe.pipeline.data.lfw", "facepipe.pipeline.train.data"),
                                  ("facepipe.pipeline.eval.metrics", "facepipe.pipeline.eval.datasets"),
                                  ("facepipe.pipeline.teachers.base", "facepipe.pipeline.data.images"),
                                  ("facepipe.export.onnx", "facepipe.stages.export")])
def test_the_layer_check_refuses_upward_and_sideways_imports(pair):
    assert _upward([pair]), pair


def test_every_package_folder_is_declared_in_pyproject():
    """pyproject lists the packages (package-dir maps them); a new folder missing there imports from a checkout
    but not from an installed wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in _modules() if path.name == "__init__.py"}
    assert found == declared, {"missing from pyproject": sorted(found - declared),
                               "declared but absent": sorted(declared - found)}

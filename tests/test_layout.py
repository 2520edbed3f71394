"""The package layout: one installed root (``avvp_pipe``), and imports that only go downward.

Layers, lowest first (ARCHITECTURE.md draws them). A module may import its own package and
any package of a lower layer, never one of its own layer or above; the check reads every
import statement of the code folders, those inside functions included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: package prefix -> layer (the longest matching prefix decides)
LAYERS = {
    "avvp_pipe.core": 0,  # the ground: errors, atomic I/O and JSON, progress, text
    "avvp_pipe.pipeline.llp": 1,  # the LLP data model
    "avvp_pipe.pipeline.decode": 1,  # clip -> frames and audio
    "avvp_pipe.models": 2,
    "avvp_pipe.extractors": 2,
    "avvp_pipe.cache": 3,  # may read the extractor registry
    "avvp_pipe.pipeline.evaluate": 3,  # the official metrics on predictions files
    "avvp_pipe.pipeline.extract": 4,
    "avvp_pipe.pipeline.train": 4,
    "avvp_pipe.pipeline.synth": 4,
    "avvp_pipe.selection": 5,  # trains through the train engine
    "avvp_pipe.pipeline.analyze": 5,
    "avvp_pipe.pipeline.cli": 6,
    "avvp_pipe.pipeline.demo": 7,  # the tour: drives the CLI
    "avvp_pipe.pipeline": 7,  # the package itself imports nothing
    "avvp_pipe": 7,
}
FOLDERS = {"avvp_pipe": "avvp_pipe", "pipeline": "avvp_pipe.pipeline", "extractors": "avvp_pipe.extractors",
           "models": "avvp_pipe.models", "selection": "avvp_pipe.selection", "cache": "avvp_pipe.cache"}
GENERIC = ("models", "cache", "pipeline", "selection", "extractors")


def _package_of(module: str) -> str:
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the code folders."""
    found = {}
    for folder, root in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((root, *parts))] = path
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every avvp_pipe import in ``path``; relative imports are refused."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module:
                out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def test_imports_only_go_downward():
    modules = _modules()
    bad = []
    for module, path in modules.items():
        own = _package_of(module)
        for line, target in _imports(path):
            if target.startswith("."):
                bad.append(f"{path.relative_to(REPO)}:{line}: relative import {target}")
                continue
            if target.split(".")[0] in GENERIC:
                bad.append(f"{path.relative_to(REPO)}:{line}: generic top-level import {target}")
                continue
            if not target.startswith("avvp_pipe"):
                continue
            other = _package_of(target)
            if other != own and LAYERS[other] >= LAYERS[own]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {own} (layer {LAYERS[own]}) imports {target} "
                           f"(layer {LAYERS[other]})")
    assert not bad, "\n".join(bad)


def test_every_code_file_is_in_a_layer():
    assert len(_modules()) > 60  # the walk found the code, not an empty folder
    for module in _modules():
        assert _package_of(module) in LAYERS


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layer check can fail: a core module importing a stage is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from avvp_pipe.pipeline.train.engine import fit\n")
    (line, target), = _imports(sample)
    assert line == 2 and LAYERS[_package_of(target)] > LAYERS["avvp_pipe.core"]


def _run_outside(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose working folder is not the repository."""
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.mark.parametrize("name", GENERIC)
def test_no_generic_top_level_name_after_install(name, tmp_path):
    result = _run_outside(f"import {name}", tmp_path)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, result.stderr


def test_the_root_package_holds_every_stage(tmp_path):
    code = ("import avvp_pipe.models.han, avvp_pipe.cache.store, avvp_pipe.selection.upper_bound, "
            "avvp_pipe.extractors.registry, avvp_pipe.pipeline.train.engine, avvp_pipe.pipeline.cli; "
            "import avvp_pipe.models.han as h; print(h.__file__)")
    result = _run_outside(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == REPO / "models" / "han.py"

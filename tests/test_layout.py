"""Packaging rules: saev_core is the library and never pulls in Prefect."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import saev_core

ROOT = Path(saev_core.__file__).parent


def test_saev_core_source_never_imports_prefect():
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "prefect"]
    assert not offenders


def test_importing_every_saev_core_module_leaves_prefect_unloaded():
    modules = [m.name for m in pkgutil.walk_packages([str(ROOT)], "saev_core.") if not m.name.endswith("__main__")]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert "saev_core.activations.dump" in modules and "saev_core.cli.app" in modules


# saev_core's packages in pipeline order: a module imports from its own package or those before it
STAGES = ["tables", "store", "activations", "sae", "scoring", "alignment", "demo", "cli"]
# configs.py (the root) validates SAE architectures, scorers and their parameters, chat templates and
# the experiment's labels through the stages' own code, importing it when a validator runs
CONFIG_VALIDATORS = {"saev_core.sae.architectures", "saev_core.activations.inputs", "saev_core.scoring.quality", "saev_core.scoring.scorers", "saev_core.demo.defaults"}


def _saev_imports(path: Path) -> list[str]:
    return [n.module for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("saev_core.")]


def test_a_layout_by_stage_whose_imports_point_down():
    assert len(list(ROOT.glob("*.py"))) <= 5  # __init__, __main__, configs, io: everything else lives in a stage
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")} == set(STAGES)
    upward = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        for module in _saev_imports(path):
            target = module.split(".")[1]
            if len(rel) == 1:
                if path.name in ("configs.py", "io.py") and module not in CONFIG_VALIDATORS:
                    upward.append(f"{path.name} -> {module}")
            elif target in STAGES and STAGES.index(target) > STAGES.index(rel[0]):
                upward.append(f"{'/'.join(rel)} -> {module}")
    assert not upward, upward
    for pkg in STAGES[:-2] + ["cli"]:
        doc = ast.get_docstring(ast.parse((ROOT / pkg / "__init__.py").read_text()))
        assert doc and doc.count("\n") == 0, f"{pkg}/__init__.py: one line on what the stage takes and gives"


def test_the_wheel_installs_the_library_only(tmp_path):
    """tasks/ and flows/ stay in the checkout: a wheel that installed them as top-level packages
    would clash with any other distribution that takes those names."""
    import shutil
    import zipfile

    repo, src = ROOT.parent, tmp_path / "src"  # a copy: setuptools leaves build/ beside the source it builds
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "saev_core", "tasks", "flows"):
        (shutil.copytree if (repo / name).is_dir() else shutil.copy)(repo / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "saev_core" in top and not top & {"tasks", "flows", "tests", "bench"}, top


def test_a_missing_browser_or_database_fails_under_ci_and_skips_elsewhere(tmp_path):
    """The browser test and the PostgreSQL soak skip on a machine without them, naming why, but
    fail a CI run: CI must not pass quietly without them."""
    import os

    (tmp_path / "test_needs.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom conftest import skip_or_fail\n\n"
        "def test_needs_chromium():\n    skip_or_fail('no Chromium on this machine')\n" % str(ROOT.parent / "tests"))
    runs = {}
    for ci in ("", "true"):
        env = {**os.environ, "CI": ci}
        runs[ci] = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", str(tmp_path / "test_needs.py")],
                                  capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert runs[""].returncode == 0 and "SKIPPED" in runs[""].stdout and "no Chromium on this machine" in runs[""].stdout
    assert runs["true"].returncode == 1 and "CI is set: this test must run" in runs["true"].stdout

"""The README's Python example runs as written (on the test world), and the public API it uses resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import saev_core

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- readme-example:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its tested Python example"
    return m.group(1)


def test_public_api_resolves():
    assert set(saev_core.__all__) == {"__version__", *saev_core._API}
    for name in saev_core.__all__:
        assert getattr(saev_core, name) is not None, name
    assert saev_core.ScoreConfig.__module__ == "saev_core.configs" and callable(saev_core.run_scoring)
    with pytest.raises(AttributeError, match="no attribute 'score'"):
        saev_core.score  # noqa: B018


def test_readme_example_runs(world_dir, tmp_path, monkeypatch):
    code = readme_example()
    assert code.count('world = "data/demo"') == 1
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace('world = "data/demo"', f'world = "{world_dir}"'), "README.md", "exec"), ns)
    top, sae = ns["top"], ns["sae"]
    assert len(top) == 5 and [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert sae["heldout"]["all"]["fvu"] < 0.5  # a trained SAE, not its init
    assert (tmp_path / "data/nb/dump/manifest.json").is_file() and (tmp_path / "data/nb/sae/sae").is_dir()
    assert isinstance(saev_core.load_sae(tmp_path / "data/nb/sae/sae"), saev_core.SAE)
    n = ns["con"].sql("SELECT count(DISTINCT sample_id) FROM scores WHERE scorer = 'agreement'").fetchall()[0][0]
    assert n == 120  # every sample of the test world's demo-rlaif split

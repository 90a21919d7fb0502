"""The CLI's flags come from the config classes: a field declared once is a flag, and the CLI
starts without torch."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal, Optional

import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from saev_core.cli.app import app
from saev_core.cli.options import config_options, flag_type
from saev_core.configs import AlignConfig, DemoConfig, DumpConfig, ExperimentConfig, FilterConfig, ScoreConfig, TrainConfig
from saev_core.scoring.scorers import SCORERS


class Toy(BaseModel):
    n: int = Field(3, description="How many.")
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    on: bool = False
    name: Optional[str] = None
    tags: list[str] = []
    nested: dict[str, int] = {}


def _toy_app(seen: dict) -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    @config_options(Toy, names={"tags": "tag"})
    def run(extra: int = typer.Option(0, "--extra"), flags: dict = None):
        seen.update(flags=flags, extra=extra)

    return toy


def test_flag_types_follow_the_annotation():
    assert flag_type(int) == Optional[int]
    assert flag_type(Optional[str]) == Optional[str]
    assert flag_type(list[float]) == Optional[list[float]]
    assert flag_type(dict[str, int]) is None and flag_type(tuple[int, int]) is None


def test_generated_flags_reach_the_command_as_given_fields_only():
    seen: dict = {}
    runner = CliRunner()
    res = runner.invoke(_toy_app(seen), ["--n", "7", "--mode", "b", "--on", "--tag", "x", "--tag", "y", "--extra", "2"])
    assert res.exit_code == 0, res.output
    assert seen == {"flags": {"n": 7, "mode": "b", "on": True, "tags": ["x", "y"]}, "extra": 2}

    res = runner.invoke(_toy_app(seen), ["--no-on"])
    assert res.exit_code == 0 and seen["flags"] == {"on": False}
    res = runner.invoke(_toy_app(seen), [])
    assert res.exit_code == 0 and seen["flags"] == {}  # absent flags leave the config file and defaults to decide

    res = runner.invoke(_toy_app(seen), ["--mode", "c"])
    assert res.exit_code == 2 and "'c' is not one of" in res.output
    res = runner.invoke(_toy_app(seen), ["--nested", "x"])  # a mapping has no flag: --set reaches it
    assert res.exit_code == 2 and "No such option" in res.output

    res = runner.invoke(_toy_app(seen), ["--help"], env={"COLUMNS": "200"})
    assert "How many (default: 3)" in res.output and "--on" in res.output and "--no-on" in res.output


def _params(*path: str) -> set[str]:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {p.name for p in cmd.params}


def test_every_flat_config_field_is_a_flag_of_its_command():
    """A field added to a stage's config becomes a flag with no second declaration."""
    renamed = {"scorers": "scorer", "fractions": "fraction", "random_seeds": "random_seed", "train_seeds": "train_seed",
               "datasets": "dataset"}
    declared = {"dump": {"dataset"}}  # dump's dataset flags reach the nested DatasetSpec
    for path, model, skip in [(("demo", "build"), DemoConfig, set()), (("dump",), DumpConfig, {"chat_template_sha256"}),
                              (("train",), TrainConfig, set()), (("score",), ScoreConfig, set()), (("filter",), FilterConfig, set()),
                              (("align",), AlignConfig, set()), (("experiment",), ExperimentConfig, set())]:
        params = _params(*path)
        flat = {f for f, info in model.model_fields.items() if flag_type(info.annotation) is not None} - skip
        missing = {f for f in flat if f"flag_{renamed.get(f, f)}" not in params and f not in declared.get(path[0], set())}
        assert not missing, (path, missing)
        assert "set_" in params


def test_a_generated_flag_reaches_the_validated_config(tmp_path):
    """`saev filter` has no hand-written flag left: a bad --top-fraction fails in FilterConfig's validation."""
    res = CliRunner().invoke(app, ["filter", "--tables", str(tmp_path / "none"), "--out", str(tmp_path / "f"), "--top-fraction", "1.5"])
    assert res.exit_code == 2
    assert res.output.startswith("error: invalid config:") and "top_fraction: Input should be less than or equal to 1" in res.output


def test_the_cli_and_the_configs_import_without_torch():
    code = ("import sys, saev_core.configs, saev_core.cli.app, saev_core\n"
            "saev_core.TrainConfig, saev_core.ScoreConfig\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pyarrow', 'duckdb', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_cross_field_check_prints_its_own_message(tmp_path):
    """A model validator's error has no field: the line is its message, without pydantic's prefix."""
    res = CliRunner().invoke(app, ["filter", "--tables", str(tmp_path), "--out", str(tmp_path / "f"), "--scorer", "nope", "--top-k", "3"])
    assert res.exit_code == 2
    assert res.output.splitlines()[1] == "  unknown scorer 'nope'; valid scorers: " + str(sorted(SCORERS))

"""The ``saev`` command line and the Prefect flow, run for real on the demo world."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from saev_core.cli.app import app


runner = CliRunner()


def test_console_script_help():
    exe = Path(sys.executable).parent / "saev"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dump" in out.stdout and "demo" in out.stdout
    for cmd in (["dump", "--help"], ["demo", "build", "--help"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0, res.output
    assert "--layer" in runner.invoke(app, ["dump", "--help"]).output


def _json(output: str) -> dict:
    return json.loads(output[output.index("{"):])


def test_dump_cli_with_config_file_and_overrides(tmp_path, world_dir):
    cfg = tmp_path / "dump.yaml"
    cfg.write_text(
        f"model: {world_dir / 'model'}\nlayer: 1\nout: {tmp_path / 'out'}\nprogress: false\n"
        f"dataset:\n  path: {world_dir / 'datasets/demo-sft/train.parquet'}\n  limit: 10\n"
    )
    res = runner.invoke(app, ["dump", "--config", str(cfg), "--set", "dataset.limit=3", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    summary = _json(res.stdout)
    assert summary["n_samples"] == 3 and summary["rows"]["image"] == 3 * 16
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["layer"] == 1 and manifest["dataset"]["limit"] == 3
    assert pq.read_table(tmp_path / "out/activations/shard-00000.parquet").num_rows == summary["rows"]["total"]


def test_dump_cli_errors_are_clear(tmp_path, world_dir):
    base = ["dump", "--model", str(world_dir / "model"), "--dataset", str(world_dir / "datasets/demo-rlaif/train.parquet"),
            "--out", str(tmp_path / "o")]
    res = runner.invoke(app, [*base, "--layer", "9"])
    assert res.exit_code == 2 and "layer 9 is out of range" in res.output
    res = runner.invoke(app, [*base, "--layer", "1", "--set", "batch_size=0"])
    assert res.exit_code == 2 and "invalid config" in res.output and "batch_size" in res.output
    res = runner.invoke(app, [*base, "--layer", "1", "--column", "question=prompt"])
    assert res.exit_code == 2 and "'question': 'prompt'" in res.output
    assert not (tmp_path / "o").exists()


def test_demo_build_cli(tmp_path):
    res = runner.invoke(app, ["demo", "build", "--out", str(tmp_path / "w"), "--n-samples", "10", "--pretrain-steps", "2",
                              "--set", "n_pretrain=16", "--set", "n_heldout=10", "--set", "pretrain_batch_size=8"])
    assert res.exit_code == 0, res.output
    out = _json(res.stdout)
    assert 0.0 <= out["heldout_accuracy"] <= 1.0 and 0.0 <= out["caption_accuracy"] <= 1.0
    assert json.loads((tmp_path / "w/world.json").read_text())["config"]["n_samples"] == 10


def test_train_and_eval_sae_cli(tmp_path, world_dir):
    dump = ["dump", "--model", str(world_dir / "model"), "--dataset", str(world_dir / "datasets/demo-rlaif/train.parquet"),
            "--limit", "40", "--layer", "2", "--out", str(tmp_path / "acts"), "--set", "progress=false"]
    assert runner.invoke(app, dump).exit_code == 0
    train = ["train", "--activations", str(tmp_path / "acts"), "--out", str(tmp_path / "sae"), "--architecture", "topk",
             "--k", "8", "--expansion-factor", "2", "--batch-size", "128", "--total-tokens", str(128 * 20),
             "--set", "scale_batches=2", "--set", "progress=false", "--set", "heldout_fraction=0.2"]
    res = runner.invoke(app, train)
    assert res.exit_code == 0, res.output
    out = _json(res.stdout)
    assert out["steps"] == 20 and out["all_l0"] == 8 and 0 < out["all_fvu"] < 1
    # both dead counts are printed: the window (total_tokens / 10 = 256 tokens) and the held-out split
    manifest = json.loads((tmp_path / "sae/manifest.json").read_text())
    assert out["dead_fraction_window"] == manifest["metrics"]["dead_fraction_window"] is not None
    assert out["dead_fraction_heldout"] == manifest["heldout"]["dead_fraction"]
    res = runner.invoke(app, ["eval-sae", str(tmp_path / "sae"), "--n-samples", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "CE-loss-recovered" in res.stdout and (tmp_path / "sae/eval.json").exists()
    res = runner.invoke(app, [*train[:-6], "--set", "batch_size=100000"])
    assert res.exit_code == 2 and "total_tokens" in res.output

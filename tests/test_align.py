"""Alignment stage (issue 5, first part): real TRL SFT and DPO runs on a filter artifact."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from saev_core.alignment.align import AlignConfig, check_inputs, run_alignment
from saev_core.alignment.filter import FilterConfig, run_filter
from saev_core.io import write_json


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, world_dir):
    """A filter artifact of the demo dataset's top 8 rows by a real `run_filter` over hand-written scores."""
    import pyarrow as pa

    from saev_core.activations.data import DatasetSpec, Sample, iter_samples, open_dataset
    from saev_core.tables.schema import SCORES, manifest_path, part_name, partition_dir

    root = tmp_path_factory.mktemp("align")
    spec = DatasetSpec(path=str(world_dir / "datasets/demo-rlaif/train.parquet"))
    ids = [s.sample_id for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)]
    # scores and a samples table for these rows, as `saev score` writes them (score = position)
    tables = root / "tables"
    n = len(ids)
    t = pa.table({"sample_id": ids, "scorer": ["l0"] * n, "score": [float(i) for i in range(n)],
                  "rank": pa.array(range(n, 0, -1), pa.int32()), "percentile": [(i + 1) / n for i in range(n)]}, schema=SCORES)
    path = partition_dir(tables, "scores", "demo", "s0") / part_name(0)
    path.parent.mkdir(parents=True)
    pq.write_table(t, path)
    samples = pa.table({"sample_id": ids, "row_index": pa.array(range(n), pa.int64())})
    path = partition_dir(tables, "samples", "demo") / part_name(0)
    path.parent.mkdir(parents=True)
    pq.write_table(samples, path)
    write_json(manifest_path(tables, "demo", "s0"), {"source_dataset": spec.model_dump(), "n_samples": n})
    run_filter(FilterConfig(tables=str(tables), out=str(root / "f"), scorer="l0", top_k=8))
    return root


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_alignment_trains_saves_and_reloads(artifact, world_dir, method):
    from transformers import AutoModelForImageTextToText

    cfg = AlignConfig(model=str(world_dir / "model"), data=str(artifact / "f"), out=str(artifact / method), method=method,
                      max_steps=5, batch_size=8, lr=1e-3)
    m = run_alignment(cfg)  # every step sees the same 8 rows, so the loss must fall
    assert m["steps"] == 5 and m["n_train_rows"] == 8 and m["filter"]["scorer"] == "l0"
    assert m["last_loss"] < m["first_loss"], m
    saved = json.loads((artifact / method / "manifest.json").read_text())
    assert saved["method"] == method
    model = AutoModelForImageTextToText.from_pretrained(artifact / method / "model")
    assert model.config.model_type == "llava" and not (artifact / method / "trainer").exists()


def test_alignment_reports_to_trls_own_tensorboard_integration(artifact, world_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))  # transformers' own variable
    cfg = AlignConfig(model=str(world_dir / "model"), data=str(artifact / "f"), out=str(tmp_path / "sft"), method="sft",
                      max_steps=3, batch_size=8, lr=1e-3, report_to="tensorboard")
    m = run_alignment(cfg)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == m["steps"] == 3 and (losses[0], losses[-1]) == pytest.approx((m["first_loss"], m["last_loss"]), rel=1e-5)


def test_lora_alignment_saves_adapter_and_merged_model(artifact, world_dir):
    from transformers import AutoModelForImageTextToText

    cfg = AlignConfig(model=str(world_dir / "model"), data=str(artifact / "f"), out=str(artifact / "lora"), method="sft",
                      max_steps=5, batch_size=8, lr=5e-3, lora=True, lora_r=4)
    m = run_alignment(cfg)
    assert m["last_loss"] < m["first_loss"], m
    assert (artifact / "lora" / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForImageTextToText.from_pretrained(artifact / "lora" / "model")
    base = AutoModelForImageTextToText.from_pretrained(world_dir / "model")
    changed = [n for (n, a), (_, b) in zip(merged.named_parameters(), base.named_parameters()) if not torch.equal(a, b)]
    assert changed and not any("lora" in n for n, _ in merged.named_parameters())


def test_bad_alignment_input_fails_before_training(artifact, world_dir, tmp_path):
    base = dict(model=str(world_dir / "model"), out=str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="not a filter artifact"):
        check_inputs(AlignConfig(data=str(tmp_path), **base))
    empty = tmp_path / "empty"
    (empty / "sft").mkdir(parents=True)
    pq.write_table(pq.read_table(artifact / "f" / "sft" / "train.parquet").slice(0, 0), empty / "sft" / "train.parquet")
    write_json(empty / "manifest.json", {})
    with pytest.raises(ValueError, match="zero rows"):
        check_inputs(AlignConfig(data=str(empty), **base))
    with pytest.raises(FileNotFoundError, match="no 'dpo' split"):
        check_inputs(AlignConfig(data=str(empty), method="dpo", **base))
    with pytest.raises(ValueError, match="no processor"):
        check_inputs(AlignConfig(data=str(artifact / "f"), model=str(tmp_path), out=str(tmp_path / "o")))


def test_alignment_under_accelerate_launch_with_two_processes(artifact, world_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m saev_core align` on CPUs: both processes train, process 0 writes and reports."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    # --multi_gpu is accelerate's torch.distributed launcher; without a GPU its processes train on the CPU (gloo).
    # (--cpu starts a single process: accelerate's multi-CPU path needs mpirun.)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "saev_core", "align",
           "--data", str(artifact / "f"), "--out", str(out), "--model", str(world_dir / "model"), "--method", "sft",
           "--set", "max_steps=3", "--set", "batch_size=4", "--set", "lr=1e-3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 3 and m["n_train_rows"] == 8
    assert r.stdout.count('"method"') == 1, r.stdout  # one report, from process 0
    assert not list(tmp_path.glob(".two.trainer*"))
    from transformers import AutoModelForImageTextToText
    assert AutoModelForImageTextToText.from_pretrained(out / "model").config.model_type == "llava"

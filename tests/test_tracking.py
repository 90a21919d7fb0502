"""Experiment tracking: the training log reaches W&B (offline), TensorBoard and MLflow, read back by their own readers."""

from __future__ import annotations

import json

import pytest

from saev_core.sae.train import train_sae
from tests.test_train import dump_dir, small  # noqa: F401 (a fixture)


def _logged(run) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if "loss" in line]


def test_tensorboard_event_files_hold_the_training_log(tmp_path, dump_dir):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    train_sae(small(dump_dir, run, report_to="tensorboard", checkpoint_every=30))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = _logged(run)
    for name in ("fvu", "l0", "loss", "dead_fraction", "lr"):
        scalars = events.Scalars(f"train/{name}")
        assert [s.step for s in scalars] == [r["step"] for r in rows]
        assert [s.value for s in scalars] == pytest.approx([r[name] for r in rows], rel=1e-6)
    # throughput goes to the tracker only: train_log.jsonl stays byte-identical across a resume
    assert [s.step for s in events.Scalars("train/tokens_per_s")] == [r["step"] for r in rows] and "tokens_per_s" not in rows[0]
    # loss, FVU and L0 per modality at every log row (on the held-out probe), and the fuller evaluation at checkpoints
    for name in ("image/fvu", "text/fvu", "image/l0", "text/l0", "image/mse"):
        m, k = name.split("/")
        assert [(s.step, s.value) for s in events.Scalars(f"train/{name}")] == [(r["step"], pytest.approx(r[m][k], rel=1e-6)) for r in rows]
    assert {"train/heldout/image/fvu", "train/heldout/text/l0"} <= set(events.Tags()["scalars"])


def _wandb_records(path) -> list[bytes]:
    """The records of a W&B transaction log (``run-*.wandb``): LevelDB's log format, 32 KiB blocks of
    chunks with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last), after a
    7-byte file header (":W&B", magic 0xBEE1, version 0). wandb >= 0.19 reads it in Go only."""
    import struct

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    records, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            records.append(parts)
    return records


def test_a_wandb_offline_run_holds_the_training_log(tmp_path, dump_dir, monkeypatch):  # noqa: F811
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wb"
    train_sae(small(dump_dir, run, report_to="wandb"))
    [log] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history = []
    for data in _wandb_records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    rows = _logged(run)
    assert [h["fvu"] for h in history] == pytest.approx([r["fvu"] for r in rows], rel=1e-6)
    assert [h["dead_fraction"] for h in history] == pytest.approx([r["dead_fraction"] for r in rows])
    assert all("tokens_per_s" in h and "lr" in h for h in history)


def test_an_mlflow_store_holds_the_training_log(tmp_path, dump_dir, monkeypatch):  # noqa: F811
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "ml"
    train_sae(small(dump_dir, run, report_to="mlflow"))
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("saev").experiment_id])
    rows = _logged(run)
    history = client.get_metric_history(found.info.run_id, "fvu")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["fvu"], rel=1e-6)) for r in rows]
    assert found.data.params["architecture"] == "topk"

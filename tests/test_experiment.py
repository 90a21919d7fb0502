"""Held-out evaluation metrics on cases with a known answer, and the experiment grid end to end."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from saev_core.cli.app import app
from saev_core.activations.data import DatasetSpec, Sample, iter_samples, open_dataset
from saev_core.alignment.experiment import ExperimentConfig, run_experiment, summarise
from saev_core.alignment.model_eval import evaluate_model, names_key, response_logps


def test_names_key_by_hand():
    assert names_key("the circle is red .", "red")
    assert names_key("it is at the Top Left .", "top left")
    assert not names_key("the circle is reddish", "red") and not names_key("left top", "top left")
    assert not names_key("anything", "")


def test_metrics_on_known_cases(world_dir, bundle, tmp_path):
    src = pq.read_table(world_dir / "heldout/clean.parquet").slice(0, 12)
    # chosen == rejected: never strictly preferred, margin exactly 0; key never generated
    same = src.set_column(src.schema.get_field_index("rejected"), "rejected", src.column("chosen"))
    same = same.set_column(same.schema.get_field_index("key"), "key", pa.array(["zebra"] * 12))
    pq.write_table(same, tmp_path / "same.parquet")
    spec = DatasetSpec(path=str(tmp_path / "same.parquet"))
    r = evaluate_model(bundle, spec, reference=bundle)
    assert r["n"] == 12 and r["preference_accuracy"] == 0.0 and r["logp_margin"] == 0.0 and r["reward_margin"] == 0.0
    assert r["answer_accuracy"] == 0.0
    # NLL equals a direct computation on one sample: -sum log p(answer tokens) / count
    samples = [s for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)]
    lp, n = response_logps(bundle, samples[:1], [samples[0].response])
    proc = bundle.processor
    full = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": samples[0].question}]},
                                     {"role": "assistant", "content": [{"type": "text", "text": samples[0].response}]}], tokenize=False)
    enc = proc(images=[samples[0].image], text=[full], return_tensors="pt")
    n_resp = len(proc.tokenizer(samples[0].response, add_special_tokens=False)["input_ids"]) + 1  # + </s>
    with torch.no_grad():
        logits = bundle.model(**enc).logits[0].log_softmax(-1)
    ids = enc["input_ids"][0]
    expect = sum(logits[t - 1, ids[t]].item() for t in range(len(ids) - n_resp, len(ids)))
    assert int(n[0]) == n_resp and lp[0].item() == pytest.approx(expect, abs=1e-4)
    # the demo base model captions images but is not yet good at the questions alignment teaches:
    # some answers right (descriptions are captions), far from all (the headroom alignment fills)
    good = evaluate_model(bundle, DatasetSpec(path=str(world_dir / "heldout/clean.parquet")), n_samples=40)
    assert 0.05 < good["answer_accuracy"] < 0.6 and good["preference_accuracy"] > 0.5, good


def test_summary_table_by_hand():
    rows = [{"scorer": "full", "fraction": 1.0, "m": 0.5}, {"scorer": "saev", "fraction": 0.5, "m": 0.6},
            {"scorer": "random", "fraction": 0.5, "m": 0.4}, {"scorer": "random", "fraction": 0.5, "m": 0.6}]
    table, md = summarise(rows, "m", base=0.45)
    by = {(t["scorer"], t["fraction"]): t for t in table}
    assert by[("random", 0.5)]["mean"] == 0.5 and by[("random", 0.5)]["std"] == pytest.approx(0.1)
    assert by[("saev", 0.5)]["relative_to_full"] == pytest.approx(1.2)
    assert "| base model | - | 1 | 0.450 | 0.900 |" in md


@pytest.fixture(scope="module")
def tables(tmp_path_factory, world_dir):
    """Hand-written scores for 40 demo samples, laid out as `saev score` writes them."""
    from saev_core.io import write_json
    from saev_core.tables.schema import SCORES, manifest_path, part_name, partition_dir

    tables = tmp_path_factory.mktemp("exp") / "tables"

    spec = DatasetSpec(path=str(world_dir / "datasets/demo-rlaif/train.parquet"))
    ids = [s.sample_id for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)][:40]
    rows = []
    for scorer in ("random", "l0"):
        rows.append(pa.table({"sample_id": ids, "scorer": [scorer] * 40, "score": [float(i % 7) for i in range(40)],
                              "rank": pa.array(range(1, 41), pa.int32()), "percentile": [0.5] * 40}, schema=SCORES))
    p = partition_dir(tables, "scores", "demo", "s0") / part_name(0)
    p.parent.mkdir(parents=True)
    pq.write_table(pa.concat_tables(rows), p)
    p = partition_dir(tables, "samples", "demo") / part_name(0)
    p.parent.mkdir(parents=True)
    pq.write_table(pa.table({"sample_id": ids, "row_index": pa.array(range(40), pa.int64())}), p)
    write_json(manifest_path(tables, "demo", "s0"), {"source_dataset": spec.model_dump(), "n_samples": 40})
    return tables


def test_minimal_experiment_grid_and_cli(tmp_path, world_dir, tables):
    cfg = ExperimentConfig(tables=str(tables), model=str(world_dir / "model"), heldout=str(world_dir / "heldout/clean.parquet"),
                           out=str(tmp_path / "exp"), scorers=["random", "l0"], fractions=[0.5, 1.0], random_seeds=[0, 1],
                           train_seeds=[0], eval_samples=16, align={"max_steps": 2, "batch_size": 8}, progress=False)
    s = run_experiment(cfg)
    assert s["n_runs"] == 4  # full + l0@50% + random@50% x 2 seeds
    lines = (tmp_path / "exp" / "results.jsonl").read_text().splitlines()
    assert {json.loads(x)["scorer"] for x in lines} == {"full", "random", "l0"}
    assert all(json.loads(x)["n_train"] in (20, 40) for x in lines)
    assert (tmp_path / "exp" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rand = next(t for t in s["table"] if t["scorer"] == "random")
    assert rand["n_runs"] == 2 and "| full | 100% | 1 |" in s["markdown"]
    # a rerun resumes: nothing is retrained
    stamp = (tmp_path / "exp" / "runs" / "l0-f050-t0" / "eval.json").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["experiment", "--out", str(tmp_path / "exp"), "--set", f"tables={tables}",
                                   "--set", f"model={world_dir / 'model'}", "--set", f"heldout={world_dir / 'heldout/clean.parquet'}",
                                   "--set", "scorers=[random, l0]", "--set", "fractions=[0.5, 1.0]", "--set", "random_seeds=[0, 1]",
                                   "--set", "train_seeds=[0]", "--set", "eval_samples=16", "--set", "progress=false",
                                   "--set", "align={max_steps: 2, batch_size: 8}"])
    assert res.exit_code == 0, res.output
    assert "| l0 | 50% | 1 |" in res.output
    assert (tmp_path / "exp" / "runs" / "l0-f050-t0" / "eval.json").stat().st_mtime_ns == stamp
    # other training settings (or another model or other scores) must not reuse those runs
    with pytest.raises(ValueError, match="runs made from another model, held-out split, scores or training config"):
        run_experiment(cfg.model_copy(update={"align": {"max_steps": 3, "batch_size": 8}}))
    bigger = run_experiment(cfg.model_copy(update={"fractions": [0.25, 0.5, 1.0]}))  # a grown grid resumes
    assert bigger["n_runs"] == 7 and (tmp_path / "exp" / "runs" / "l0-f050-t0" / "eval.json").stat().st_mtime_ns == stamp
    (tmp_path / "exp" / "notes.txt").write_text("mine")  # --overwrite removes only what an experiment writes
    redo = run_experiment(cfg.model_copy(update={"align": {"max_steps": 1, "batch_size": 8}, "scorers": ["l0"], "random_seeds": []}),
                          overwrite=True)
    assert redo["n_runs"] == 2 and not (tmp_path / "exp" / "runs" / "random-f050-s0-t0").exists()
    assert (tmp_path / "exp" / "notes.txt").read_text() == "mine"


def test_experiment_flow_with_real_prefect(tmp_path, world_dir, tables, prefect_server):
    from prefect.client.schemas.objects import StateType

    from flows.experiment import saev_experiment

    config = dict(tables=str(tables), model=str(world_dir / "model"), heldout=str(world_dir / "heldout/clean.parquet"),
                  out=str(tmp_path / "exp"), scorers=["l0"], fractions=[0.5, 1.0], train_seeds=[0], eval_samples=8,
                  align={"max_steps": 1, "batch_size": 8})
    state = saev_experiment(config, return_state=True)
    assert state.type == StateType.COMPLETED
    summary = state.result()
    assert summary["n_runs"] == 2 and (tmp_path / "exp" / "plot.png").exists()


def test_oracle_line_keeps_clean_rows_only(tmp_path, world_dir, tables):
    """The evaluation-only headroom oracle: every clean row at its natural fraction, clean rows only below it."""
    lab = pq.read_table(world_dir / "labels.parquet").to_pandas()
    ids = pq.read_table(next((tables / "samples").rglob("*.parquet"))).column("sample_id").to_pylist()
    lab = lab[(lab.dataset == "demo-rlaif") & lab.sample_id.isin(ids)].assign(dataset="demo")
    pq.write_table(pa.Table.from_pandas(lab, preserve_index=False), tmp_path / "labels.parquet")
    n_clean = int(lab.is_clean.sum())
    assert 10 < n_clean < 40
    cfg = ExperimentConfig(tables=str(tables), model=str(world_dir / "model"), heldout=str(world_dir / "heldout/clean.parquet"),
                           labels=str(tmp_path / "labels.parquet"), out=str(tmp_path / "exp"), scorers=["l0"],
                           fractions=[0.25, 1.0], random_seeds=[0], train_seeds=[0], eval_samples=8,
                           align={"max_steps": 1, "batch_size": 8}, progress=False)
    natural = round(n_clean / 40, 4)
    assert [(r["scorer"], r["fraction"]) for r in cfg.runs()] == [("full", 1.0), ("l0", 0.25), ("oracle", natural), ("oracle", 0.25)]
    s = run_experiment(cfg)
    assert {(t["scorer"], t["fraction"]) for t in s["table"]} >= {("oracle", natural), ("oracle", 0.25)}
    clean = set(lab.sample_id[lab.is_clean])
    kept = {d.name: set(pq.read_table(d / "data" / "selected.parquet").column("sample_id").to_pylist())
            for d in (tmp_path / "exp" / "runs").iterdir() if d.name.startswith("oracle")}
    assert kept[f"oracle-f{round(natural * 100):03d}-t0"] == clean
    assert kept["oracle-s0-f025-t0"] < clean and len(kept["oracle-s0-f025-t0"]) == 10
    manifest = json.loads((tmp_path / "exp" / "runs" / "oracle-s0-f025-t0" / "data" / "manifest.json").read_text())
    assert manifest["scorer"] == "oracle"


def test_full_data_steps_by_hand():
    from saev_core.alignment.align import AlignConfig
    from saev_core.alignment.experiment import full_data_steps

    base = dict(model="m", data="d", out="o")
    assert full_data_steps(AlignConfig(**base, epochs=4, batch_size=16), 2000) == 500
    assert full_data_steps(AlignConfig(**base, epochs=4, batch_size=16, grad_accum=2), 2000) == 250
    assert full_data_steps(AlignConfig(**base, epochs=0.5, batch_size=8), 41) == 3  # ceil(6 batches x 0.5)
    assert full_data_steps(AlignConfig(**base, max_steps=7), 2000) == 7


def test_match_steps_gives_a_subset_the_steps_of_full_data(tmp_path, world_dir, tables):
    cfg = ExperimentConfig(tables=str(tables), model=str(world_dir / "model"), heldout=str(world_dir / "heldout/clean.parquet"),
                           out=str(tmp_path / "exp"), scorers=["l0"], fractions=[0.25, 1.0], random_seeds=[], train_seeds=[0],
                           eval_samples=4, align={"epochs": 0.5, "batch_size": 8}, match_steps=True, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "exp" / "results.jsonl").read_text().splitlines()] \
        if run_experiment(cfg) else []
    assert {r["scorer"]: (r["n_train"], r["steps"]) for r in rows} == {"full": (40, 3), "l0": (10, 3)}

"""The `saev` flow on real Prefect: every stage in the artifact store, cached on the store's key."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from saev_core.cli.app import app
from saev_core.store.artifacts import ArtifactStore


def flow_config(world_dir, root, **over) -> dict:
    return {
        "artifacts": str(root), "model": str(world_dir / "model"),
        "dataset": {"path": str(world_dir / "datasets/demo-rlaif/train.parquet")},
        "labels": str(world_dir / "labels.parquet"), "heldout": str(world_dir / "heldout/clean.parquet"),
        "limit": 30, "dump": {"progress": False},
        "sae": {"batch_size": 128, "total_tokens": 128 * 30, "scale_batches": 2, "buffer_rows": 4096, "progress": False},
        "eval_samples": 4, "model_eval_samples": 4, "score": {"progress": False}, "align": {"method": "sft", "max_steps": 2, "batch_size": 4}, "report_latents": 3, **over,
    }


def task_states(flow_state, settle_s: float = 300) -> dict[str, str]:
    """Task name -> state name of one flow run, read back from the Prefect API.

    Task states reach the API asynchronously (as events) and may trail the flow's return on a
    loaded machine (a task run can even be listed before it has a state), so this waits until no
    task is still Pending or Running."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.time() + settle_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
            states = {r.name: r.state.name if r.state else "Pending" for r in runs}  # no state yet: its event is in flight
            if time.time() > deadline or not any(v in ("Pending", "Running") for v in states.values()):
                return states
            time.sleep(1)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, world_dir, prefect_server):
    from flows.pipeline import PipelineConfig, saev_pipeline

    root = tmp_path_factory.mktemp("pipeline") / "artifacts"
    state = saev_pipeline(PipelineConfig.model_validate(flow_config(world_dir, root)), return_state=True)
    return root, state


def test_flow_completes_and_fills_the_store(first_run, world_dir):
    from prefect.client.schemas.objects import StateType

    root, state = first_run
    assert state.type == StateType.COMPLETED
    s = state.result()
    assert s["samples"] == 30 and s["sae_l0"] == 16 and 0 < s["sae_fvu"]["all"] < 1
    from saev_core.scoring.scorers import default_scorers

    assert s["filtered_kept"] == 15 and set(s["scorer_auroc"]) == set(default_scorers())
    assert s["alignment"]["train_rows"] == 15 and 0 <= s["alignment"]["aligned"]["answer_accuracy"] <= 1
    # beside the scorer's subset: a random one and the oracle's (clean rows only) of the same size
    assert set(s["alignment"]["baselines"]) == {"random", "oracle"}
    import pyarrow.parquet as pq

    labels = pq.read_table(world_dir / "labels.parquet").to_pandas().set_index(["dataset", "sample_id"])["is_clean"]
    kept = {}
    for rec in ArtifactStore.at(root).list():
        if rec["stage"] == "filter":
            conf = ArtifactStore.at(root).record("filter", rec["key"])["config"]
            sel = pq.read_table(root / "filter" / rec["key"] / "data" / "selected.parquet").to_pandas()
            kept["oracle" if conf.get("oracle_labels") else conf["scorer"]] = labels.loc[list(zip(sel.dataset, sel.sample_id))]
    assert set(kept) == {s["alignment"]["scorer"], "random", "oracle"} and all(len(v) == 15 for v in kept.values())
    assert kept["oracle"].all() and not kept["random"].all()
    from flows.pipeline import render_summary

    text = render_summary(s)  # what `make run` prints: the three subsets beside the base model
    assert "| none (base model) |" in text and "| random |" in text and "| oracle (clean rows only) |" in text
    # each accuracy with its binomial standard error on the rows evaluated (4 here), and the dead latents
    acc = s["alignment"]["aligned"]["answer_accuracy"]
    assert f"{acc:.3f} ± {math.sqrt(acc * (1 - acc) / 4):.3f}" in text and "evaluation-only labels" in text
    assert "dead latents:" in text and s["sae_dead"]["heldout_tokens"] > 0
    index = open(s["report"]).read()  # the feature browser, with the FVU-vs-L0 plot of the store's SAEs
    assert "FVU vs L0" in index and len(list((root / "report").glob("*/html/latents/*.html"))) == 3
    stages = {r["stage"] for r in ArtifactStore.at(root).list()}
    assert stages == {"dump", "train", "frontier", "eval-sae", "score", "report", "filter", "align", "evaluate"}
    # the FVU-vs-L0 frontier: the pipeline's TopK SAE (k=16) and the sweep's k=4 and k=32, on the same dump
    from saev_core.cli.locate import sae_points
    points = sae_points(ArtifactStore.at(root), s["dump"])
    assert sorted(p["l0"] for p in points) == [4, 16, 32] and all(0 < p["fvu"] < 1.5 for p in points)
    assert sae_points(ArtifactStore.at(root), "/elsewhere") == []
    store = ArtifactStore.at(root)
    [main] = [store.record("train", r["key"])["config"] for r in store.list() if r["stage"] == "train"]
    budgets = {store.record("frontier", r["key"])["config"]["total_tokens"] for r in store.list() if r["stage"] == "frontier"}
    assert budgets == {max(main["total_tokens"] // 4, main["batch_size"])}  # frontier_tokens: a quarter of the SAE's
    assert list((root / "tables/scores/dataset=demo-rlaif").glob("sae_id=*/part-00000.parquet"))
    states = task_states(state)
    assert all(v == "Completed" for v in states.values()), states
    # the report's plots as a Prefect artifact, inline PNGs the UI can show
    import base64

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["saev-report-plots"])))
    md = arts[0].data
    assert "#### Score distributions" in md and "#### SAEs: FVU vs L0" in md
    uri = md.split("](data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(uri).startswith(b"\x89PNG")


def test_prefect_shows_each_stages_metrics_and_the_assets_lineage(first_run):
    """Where Prefect users look: a table artifact of metrics per stage, and an asset per artifact
    (its location) whose materialization event names the upstream artifacts' assets."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    root, state = first_run
    run_id = state.state_details.flow_run_id
    store = ArtifactStore.at(root)
    records = store.list()
    asset = {r["key"]: f"{root.absolute().as_uri()}/{r['stage']}/{r['key']}" for r in records}
    of = {stage: [asset[r["key"]] for r in records if r["stage"] == stage] for stage in {r["stage"] for r in records}}
    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["saev-train-metrics"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        rows = {r["metric"]: r["value"] for r in json.loads(table.data)}
        [train] = [r for r in records if r["stage"] == "train"]
        assert table.type == "table" and rows["image_fvu"] == round(train["metrics"]["image_fvu"], 4)
        lineage, deadline = {}, time.time() + 120  # events reach the API asynchronously
        while time.time() < deadline and len(lineage) < len(asset):
            page = client.read_events(filter=EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"]),
                                                         related=EventRelatedFilter(id=[f"prefect.flow-run.{run_id}"])), limit=50)
            lineage = {e.resource.id: {r.id for r in e.related if r.get("prefect.resource.role") == "asset"} for e in page.events}
            time.sleep(1)
    assert set(lineage) == set(asset.values())  # every artifact the run built is an asset
    assert lineage[of["train"][0]] == set(of["dump"]) and lineage[of["score"][0]] == {*of["dump"], *of["train"]}
    assert all(lineage[a] == set(of["score"]) for a in of["filter"]) and len(of["align"]) == 3
    assert all(len(lineage[a]) == 1 and lineage[a] <= set(of["filter"]) for a in of["align"])


def test_a_copied_store_run_from_another_directory_is_all_cached(first_run, world_dir, tmp_path, monkeypatch):
    """Users rsync a store to a GPU box or mount it elsewhere: the copy is whole, and runtime fields
    (the device, the dump's batch size) keep every key. Runs before the test below changes the scoring."""
    from flows.pipeline import PipelineConfig, saev_pipeline

    root, _ = first_run
    copy = tmp_path / "other-disk" / "store"
    shutil.copytree(root, copy)
    away = root.with_name("moved-away")
    root.rename(away)  # while the copy runs, the original cannot be read
    try:
        monkeypatch.chdir(tmp_path)
        base = flow_config(world_dir, copy)
        runtime = {"sae": {**base["sae"], "device": "cpu"}, "dump": {"progress": False, "batch_size": 3}}
        state = saev_pipeline(PipelineConfig.model_validate({**base, **runtime}), return_state=True)
        states = {n.rsplit("-", 1)[0]: v for n, v in task_states(state).items() if not n.startswith("scorer-quality")}
        assert states and all(v == "Cached" for v in states.values()), states
        summary = state.result()
        for field in ("dump", "sae", "tables", "filtered", "aligned_model", "report"):
            assert summary[field].startswith(str(copy)), (field, summary[field])
        # a changed scoring config on the copy reruns what is downstream, on the copy's dump and SAE
        # (tests/test_store_relocation.py covers a model and dataset that live inside the store)
        rescored = saev_pipeline(PipelineConfig.model_validate({**base, "score": {"progress": False, "tau": 0.25}}), return_state=True)
        states = {n.rsplit("-", 1)[0]: v for n, v in task_states(rescored).items()}
        assert states["train-sae"] == "Cached" and states["score-dataset"] == states["report"] == states["align"] == "Completed", states
        assert rescored.result()["filtered"].startswith(str(copy))
    finally:
        away.rename(root)


def test_rerun_is_cached_and_a_changed_config_reruns_only_downstream(first_run, world_dir):
    from flows.pipeline import PipelineConfig, saev_pipeline

    root, first = first_run
    second = saev_pipeline(PipelineConfig.model_validate(flow_config(world_dir, root)), return_state=True)
    assert second.result() == first.result()
    states = task_states(second)
    cached = {n.rsplit("-", 1)[0]: v for n, v in states.items() if not n.startswith("scorer-quality")}
    assert cached and all(v == "Cached" for v in cached.values()), states

    third = saev_pipeline(PipelineConfig.model_validate(flow_config(world_dir, root, score={"progress": False, "tau": 0.5})),
                          return_state=True)
    states = {n.rsplit("-", 1)[0]: v for n, v in task_states(third).items()}
    assert states["dump-activations"] == states["train-sae"] == states["eval-sae"] == "Cached", states
    assert states["score-dataset"] == states["filter-dataset"] == states["align"] == "Completed", states


def test_artifacts_cli_lists_and_collects(first_run, tmp_path):
    root, _ = first_run
    runner = CliRunner()
    res = runner.invoke(app, ["artifacts", "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert {"dump", "train", "score"} <= {r["stage"] for r in rows}
    res = runner.invoke(app, ["artifacts", "--root", str(root)])
    assert res.exit_code == 0 and "dump" in res.output and "samples=30" in res.output
    # an unfinished directory (a crashed stage) is collected; finished ones stay
    (root / "dump" / "0123456789abcdef").mkdir()
    res = runner.invoke(app, ["artifacts", "gc", "--root", str(root)])
    assert res.exit_code == 0 and "0123456789abcdef" in res.output
    assert not (root / "dump" / "0123456789abcdef").exists()
    assert len(ArtifactStore.at(root).list()) == len(rows)


def test_gc_drops_the_table_partitions_of_the_saes_it_removes(tmp_path):
    from saev_core.io import write_json
    from saev_core.tables.schema import manifest_path

    store = ArtifactStore.at(tmp_path / "store")
    old = store.run("train", {"k": 1}, [], lambda out: (out / "sae").mkdir() or {})
    new = store.run("train", {"k": 2}, [], lambda out: (out / "sae").mkdir() or {})

    def scored(sae_id, sae_path):
        write_json(manifest_path(store.tables, "d", sae_id), {"sae": sae_path})
        for table in ("sample_features", "feature_stats", "scores"):
            (store.tables / table / "dataset=d" / f"sae_id={sae_id}").mkdir(parents=True)
            (store.tables / table / "dataset=d" / f"sae_id={sae_id}" / "part-00000.parquet").write_bytes(b"x")

    scored("aaa", str(store.root / "train" / old["key"] / "sae"))
    scored("bbb", str(store.root / "train" / new["key"] / "sae"))
    scored("ccc", str(tmp_path / "elsewhere" / "sae"))  # an SAE from outside the store: never collected
    (store.tables / "samples" / "dataset=d").mkdir(parents=True)

    assert store.gc(keep=[new["key"]], dry_run=True) and (store.tables / "scores/dataset=d/sae_id=aaa").exists()
    removed = store.gc(keep=[new["key"]])
    assert str(store.root / "train" / old["key"]) in removed
    left = sorted(p.name for p in (store.tables / "scores" / "dataset=d").iterdir())
    assert left == ["sae_id=bbb", "sae_id=ccc"]
    assert not manifest_path(store.tables, "d", "aaa").exists() and manifest_path(store.tables, "d", "ccc").exists()
    assert (store.tables / "samples" / "dataset=d").exists()


def test_standalone_commands_default_to_what_the_pipeline_built(first_run, tmp_path, monkeypatch):
    """After `make run`, `saev score` with no paths scores the pipeline's newest SAE on its own dump."""
    root, state = first_run
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "artifacts").symlink_to(root)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["score", "--tables", str(tmp_path / "tables"), "--dataset-name", "cli", "--set", "progress=false"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["sae_id"] == state.result()["sae_id"] and out["n_samples"] == 30


@pytest.mark.parametrize("stage, typo, says", [
    ("sae", {"totl_tokens": 5}, "sae.totl_tokens"), ("dump", {"batch_sise": 4}, "dump.batch_sise"),
    ("score", {"scorers": ["saevv"]}, "unknown scorer 'saevv'"), ("align", {"method": "ppo"}, "align.method"),
    ("sae", {"architecture": "relu"}, "k: not a field of a relu SAE"),
    ("score", {"agreement_tua": 0.3}, "score.agreement_tua"), ("score", {"params": {"agreement": {"tua": 0.3}}}, "tua"),
])
def test_a_typo_in_a_stage_override_fails_at_the_door(world_dir, tmp_path, stage, typo, says):
    """Before any stage runs (nothing is written), naming the field."""
    from pydantic import ValidationError

    from flows.pipeline import PipelineConfig
    from flows.rescore import RescoreConfig

    conf = flow_config(world_dir, tmp_path / "artifacts")
    with pytest.raises(ValidationError, match=says.replace("(", r"\(")):
        PipelineConfig.model_validate({**conf, stage: {**conf.get(stage, {}), **typo}})
    if stage in ("dump", "score") and "." in says:
        with pytest.raises(ValidationError, match=says.split(".")[1]):
            RescoreConfig.model_validate({stage: typo})
    assert not (tmp_path / "artifacts").exists()


def test_clip_baseline_trains_the_demo_clip_as_a_stage_and_scores_clip_score(tmp_path, prefect_server):
    """On the demo world the pipeline builds itself, by default: a `clip` stage below `prepare`, whose
    model scoring reads, so clip_score sits in the tables, the AUROC beside the SAE's scorers and
    its top half in the alignment table beside random and the oracle."""
    from flows.pipeline import PipelineConfig, saev_pipeline
    from saev_core.scoring.scorers import default_scorers

    root = tmp_path / "artifacts"
    demo = {"n_samples": 40, "n_heldout": 20, "n_pretrain": 400, "pretrain_steps": 40}
    conf = {**flow_config(tmp_path, root), "model": None, "dataset": None, "labels": None, "heldout": None,
            "demo": demo, "report_latents": 0}
    s = saev_pipeline(PipelineConfig.model_validate(conf))
    store = ArtifactStore.at(root)
    [clip] = [store.record("clip", r["key"]) for r in store.list() if r["stage"] == "clip"]
    [world] = [r["key"] for r in store.list() if r["stage"] == "prepare"]
    assert clip["upstream"] == [world] and clip["manifest"]["steps"] == 20  # the MLLM vision stage's budget
    [score] = [store.record("score", r["key"]) for r in store.list() if r["stage"] == "score"]
    assert score["config"]["clip_model"] == clip["manifest"]["model"] and clip["key"] in score["upstream"]
    assert set(s["scorer_auroc"]) == {*default_scorers(), "clip_score"}
    from saev_core.tables.query import connect

    [(n,)] = connect(root / "tables").execute("SELECT count(*) FROM scores WHERE scorer = 'clip_score' AND score BETWEEN -1 AND 1").fetchall()
    assert n == 30
    from flows.pipeline import render_summary

    assert set(s["alignment"]["baselines"]) == {"random", "oracle", "clip_score"}
    assert "| clip_score (top) |" in render_summary(s)
    with pytest.raises(ValueError, match="set score.clip_model"):
        PipelineConfig.model_validate({**flow_config(tmp_path, root), "clip_baseline": True})


def test_nightly_rescore_scores_only_new_datasets(first_run, world_dir, tmp_path):
    import yaml

    from flows.rescore import RescoreConfig, nightly_rescore

    root, _ = first_run
    registry = tmp_path / "registry"
    registry.mkdir()
    # demo-rlaif is already scored by the pipeline (same SAE): it must stay untouched
    (registry / "demo-rlaif.yaml").write_text(yaml.safe_dump(
        {"dataset": {"path": str(world_dir / "datasets/demo-rlaif/train.parquet"), "limit": 30}}))
    old = next((root / "tables/scores/dataset=demo-rlaif").rglob("*.parquet"))
    stamp = old.stat().st_mtime_ns
    cfg = RescoreConfig(artifacts=str(root), registry=str(registry), dump={"progress": False}, score={"progress": False})
    assert nightly_rescore(cfg)["scored"] == []

    # The pipeline's own dataset under another name: nightly builds the dump config the way the
    # pipeline does (one shared function), so its key is the pipeline's and the dump is reused.
    store = ArtifactStore.at(root)
    dumps = {r["key"] for r in store.list() if r["stage"] == "dump"}
    (registry / "again.yaml").write_text(yaml.safe_dump(
        {"name": "demo-rlaif-again", "dataset": {"path": str(world_dir / "datasets/demo-rlaif/train.parquet"), "limit": 30}}))
    assert nightly_rescore(cfg)["scored"] == ["demo-rlaif-again"]
    assert {r["key"] for r in store.list() if r["stage"] == "dump"} == dumps

    (registry / "new.yaml").write_text(yaml.safe_dump(
        {"name": "demo-align", "dataset": {"path": str(world_dir / "datasets/demo-align-anything/train.parquet"), "limit": 20}}))
    res = nightly_rescore(cfg)
    assert res["scored"] == ["demo-align"] and res["already_scored"] == ["demo-rlaif-again", "demo-rlaif"]  # in file order
    assert old.stat().st_mtime_ns == stamp
    from saev_core.tables.query import connect

    n = connect(root / "tables").execute("SELECT dataset, count(DISTINCT sample_id) FROM scores GROUP BY ALL ORDER BY ALL").fetchall()
    assert n == [("demo-align", 20), ("demo-rlaif", 30), ("demo-rlaif-again", 30)]
    assert nightly_rescore(cfg)["scored"] == []  # nothing new: nothing done

    (registry / "bad.yaml").write_text("dataset: [oops")
    with pytest.raises(ValueError, match="registry file .*bad.yaml is invalid"):
        nightly_rescore(cfg)


def test_flow_killed_mid_dump_resumes_without_duplicate_or_missing_shards(world_dir, tmp_path, prefect_server):
    import os
    import signal
    import subprocess
    import sys
    import time

    import pyarrow.parquet as pq

    from flows.pipeline import PipelineConfig, saev_pipeline
    from saev_core.activations.data import DatasetSpec
    from saev_core.activations.dump import DumpConfig, run_dump

    root = tmp_path / "artifacts"
    cfg = flow_config(world_dir, root, limit=None, dump={"progress": False, "samples_per_shard": 10, "batch_size": 1, "cpu_threads": 1})
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    code = ("import json, sys; from flows.pipeline import PipelineConfig, saev_pipeline; "
            "saev_pipeline(PipelineConfig.model_validate(json.loads(sys.argv[1])))")
    log = tmp_path / "flow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=env, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    # No deadline: on a loaded machine the flow is slow, but it either writes its second shard or exits.
    while proc.poll() is None and not list(root.glob("dump/*/activations/shard-00001.parquet")):
        time.sleep(0.05)
    assert proc.poll() is None, f"the flow exited (rc {proc.returncode}) before its second shard:\n{log.read_text()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    dump_dir = next(root.glob("dump/*"))
    assert not (dump_dir / "manifest.json").exists(), "the dump finished before the kill; nothing was interrupted"
    assert not (dump_dir / "store.json").exists()

    state = saev_pipeline(PipelineConfig.model_validate(cfg), return_state=True)
    assert state.type.value == "COMPLETED"
    assert state.result()["samples"] == 120
    # the resumed dump equals an uninterrupted one, shard by shard
    ref = tmp_path / "ref"
    run_dump(DumpConfig(model=str(world_dir / "model"), dataset=DatasetSpec(path=str(world_dir / "datasets/demo-rlaif/train.parquet")),
                        layer=PipelineConfig().layer, out=str(ref), samples_per_shard=10, batch_size=1, cpu_threads=1, progress=False))
    got = sorted(p.name for p in (dump_dir / "activations").glob("*.parquet"))
    assert got == sorted(p.name for p in (ref / "activations").glob("*.parquet")) and len(got) == 12
    ids = [s for name in got for s in pq.read_table(dump_dir / "samples" / name).column("sample_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 120
    for name in got:
        assert pq.read_table(dump_dir / "activations" / name).equals(pq.read_table(ref / "activations" / name))


def test_dump_and_score_shards_on_a_dask_cluster_match_the_sequential_run(world_dir, tmp_path, prefect_server, monkeypatch):
    """Two worker processes (not threads), which reach the test's Prefect server through the
    environment as workers on other machines would, and write into the shared store."""
    import pyarrow.parquet as pq
    from prefect import flow
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    monkeypatch.setenv("TQDM_DISABLE", "1")

    from flows.pipeline import dump_stage, score_stage
    from saev_core.sae.train import TrainConfig, train_sae

    conf = {"model": str(world_dir / "model"), "dataset": {"path": str(world_dir / "datasets/demo-rlaif/train.parquet"), "limit": 60},
            "layer": 2, "samples_per_shard": 15, "progress": False}

    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})

    @flow(task_runner=runner)
    def dask_dump(root: str) -> dict:
        return dump_stage(ArtifactStore.at(root), conf, [], shard_tasks=True)

    @flow
    def sequential_dump(root: str) -> dict:
        return dump_stage(ArtifactStore.at(root), conf, [], shard_tasks=False)

    a, b = dask_dump(str(tmp_path / "dask")), sequential_dump(str(tmp_path / "seq"))
    assert a["manifest"]["n_samples"] == b["manifest"]["n_samples"] == 60 and a["key"] == b["key"]
    files = sorted(p.name for p in (tmp_path / "dask" / "dump" / a["key"] / "activations").glob("*.parquet"))
    assert len(files) == 4
    for name in files:
        got = pq.read_table(tmp_path / "dask" / "dump" / a["key"] / "activations" / name)
        assert got.equals(pq.read_table(tmp_path / "seq" / "dump" / b["key"] / "activations" / name))
    # scoring: one task per shard on the cluster, then the finishing task; same tables as one task
    sae = tmp_path / "sae"
    train_sae(TrainConfig(activations=b["path"], out=str(sae), architecture="topk", k=8, expansion_factor=4, batch_size=256,
                          total_tokens=256 * 20, scale_batches=2, buffer_rows=2048, progress=False))

    def score_conf(dump):
        return {"activations": dump["path"], "sae": str(sae), "dataset_name": "demo", "progress": False, "top": 10, "per_side": 2}

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True}))
    def dask_score(root: str) -> dict:
        return score_stage(ArtifactStore.at(root), score_conf(a), ["d", "s"], 4, shard_tasks=True)

    @flow
    def sequential_score(root: str) -> dict:
        return score_stage(ArtifactStore.at(root), score_conf(b), ["d", "s"], 4, shard_tasks=False)

    state = dask_score(str(tmp_path / "dask"), return_state=True)
    sa, sb = state.result(), sequential_score(str(tmp_path / "seq"))
    names = [n.rsplit("-", 1)[0] for n in task_states(state)]
    assert names.count("score-shard") == 4 and names.count("score-dataset") == 1
    assert sa["manifest"]["score_summary"] == sb["manifest"]["score_summary"]
    for table in ("scores", "feature_stats", "sample_features"):
        parts = sorted(p.relative_to(tmp_path / "seq") for p in (tmp_path / "seq" / "tables" / table).rglob("*.parquet"))
        assert parts and parts == sorted(p.relative_to(tmp_path / "dask") for p in (tmp_path / "dask" / "tables" / table).rglob("*.parquet"))
        for rel in parts:
            assert pq.read_table(tmp_path / "dask" / rel).equals(pq.read_table(tmp_path / "seq" / rel)), rel


def test_out_of_memory_retries_with_half_the_batch():
    import torch

    from tasks.common import with_smaller_batches

    seen = []

    def stage(cfg):
        seen.append(cfg["batch_size"])
        if cfg["batch_size"] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"ok": cfg["batch_size"]}

    assert with_smaller_batches(stage, {"batch_size": 16}, "batch_size") == {"ok": 4} and seen == [16, 8, 4]
    with pytest.raises(torch.OutOfMemoryError):
        with_smaller_batches(stage, {"batch_size": 64}, "batch_size", tries=2)

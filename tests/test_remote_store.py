"""An artifact store on S3: a real S3 API (moto's server on a local port) through s3fs, as a user
would point `artifacts` at a bucket. The flow runs, a machine with an empty cache finds every stage
finished, and a changed config reruns downstream stages on inputs pulled from the bucket."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
from typer.testing import CliRunner

from saev_core.cli.app import app
from saev_core.store.remote import Mirror
from saev_core.store.artifacts import ArtifactStore
from tests.test_pipeline_flow import flow_config, task_states

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def bucket():
    """A live S3 endpoint with an empty bucket; credentials and endpoint come from the environment,
    the way boto-based tools are configured."""
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                     "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("saev-test")
        yield "s3://saev-test"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_mirror_transfers_only_what_changed(bucket, tmp_path):
    a = Mirror(f"{bucket}/mirror", tmp_path / "a")
    (a.local / "x" / "d").mkdir(parents=True)
    for name in ("one.txt", "d/two.txt", "store.json"):
        (a.local / "x" / name).write_text(name)
    assert a.push("x", last="store.json")[-1] == "x/store.json"
    assert a.push("x") == []
    (a.local / "x" / "one.txt").write_text("changed")
    assert a.push("x") == ["x/one.txt"]

    b = Mirror(f"{bucket}/mirror", tmp_path / "b")
    assert sorted(b.pull("x")) == ["x/d/two.txt", "x/one.txt", "x/store.json"]
    assert b.pull("x") == [] and (b.local / "x/one.txt").read_text() == "changed"
    (a.local / "x" / "d" / "two.txt").write_text("again")
    a.push("x")
    assert b.pull("x") == ["x/d/two.txt"] and (b.local / "x/d/two.txt").read_text() == "again"
    (a.local / "x" / "one.txt").unlink()
    a.push("x", delete=True)
    assert not b.fs.exists(b.remote("x/one.txt")) and b.fs.exists(b.remote("x/store.json"))


def test_a_bad_url_names_the_missing_backend():
    with pytest.raises(ValueError, match="fsspec backend"):
        Mirror("nosuchscheme://bucket/saev")


def test_pipeline_on_s3_resumes_from_the_bucket_on_an_empty_cache(bucket, world_dir, tmp_path, prefect_server, monkeypatch):
    from flows.pipeline import PipelineConfig, saev_pipeline

    cache = tmp_path / "cache"
    monkeypatch.setenv("SAEV_CACHE", str(cache))
    url = f"{bucket}/pipeline"
    config = flow_config(world_dir, url, report_latents=2)
    first = saev_pipeline(PipelineConfig.model_validate(config), return_state=True)
    s = first.result()
    store = ArtifactStore.at(url)
    assert s["artifacts"] == url and str(store.root).startswith(str(cache))
    stages = {r["stage"] for r in store.list()}
    assert stages == {"dump", "train", "frontier", "eval-sae", "score", "report", "filter", "align", "evaluate"}
    remote = Mirror(url, tmp_path / "peek")
    assert {r.split("/")[0] for r in remote.glob("*/*/store.json")} == stages
    assert remote.glob("tables/scores/dataset=demo-rlaif/sae_id=*/part-00000.parquet")
    # the stage's Prefect artifact points at the bucket, not at a worker's cache
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["saev-dump"]), flow_run_id=ArtifactFilterFlowRunId(any_=[first.state_details.flow_run_id])))
    assert len(arts) == 1 and f"`{url}/dump/" in arts[0].data, arts[0].data
    with get_client(sync_client=True) as client:
        [link] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["saev-dump-files"]), flow_run_id=ArtifactFilterFlowRunId(any_=[first.state_details.flow_run_id])))
    assert f"]({url}/dump/" in link.data, link.data  # create_link_artifact: a link to the bucket's files (stored as Markdown)

    # another machine: its own, empty SAEV_CACHE elsewhere; everything comes from the bucket
    other = tmp_path / "elsewhere" / "cache"
    monkeypatch.setenv("SAEV_CACHE", str(other))
    second = saev_pipeline(PipelineConfig.model_validate(config), return_state=True)
    states = {n.rsplit("-", 1)[0]: v for n, v in task_states(second).items() if not n.startswith("scorer-quality")}
    assert states and all(v == "Cached" for v in states.values()), states
    # the same AUROCs, read from tables pulled from the bucket, and every path in this machine's cache
    assert second.result() == json.loads(json.dumps(s).replace(str(cache), str(other)))
    assert (ArtifactStore.at(url).tables / "scores").is_dir() and str(ArtifactStore.at(url).root).startswith(str(other))
    monkeypatch.setenv("SAEV_CACHE", str(cache))

    shutil.rmtree(cache)  # a changed scoring config reruns score and what follows, on the dump and SAE from the bucket
    third = saev_pipeline(PipelineConfig.model_validate(flow_config(world_dir, url, report_latents=2, score={"progress": False, "tau": 0.5})),
                          return_state=True)
    states = {n.rsplit("-", 1)[0]: v for n, v in task_states(third).items()}
    assert states["dump-activations"] == states["train-sae"] == "Cached", states
    assert states["score-dataset"] == states["filter-dataset"] == states["align"] == "Completed", states

    # the nightly flow on the bucket, from an empty cache: scores a new dataset with the pipeline's SAE
    import yaml

    from flows.rescore import RescoreConfig, nightly_rescore

    shutil.rmtree(cache)
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "more.yaml").write_text(yaml.safe_dump(
        {"name": "more", "dataset": {"path": str(world_dir / "datasets/demo-sft/train.parquet"), "limit": 12}}))
    nightly = nightly_rescore(RescoreConfig(artifacts=url, registry=str(registry), dump={"progress": False}, score={"progress": False}))
    assert nightly["scored"] == ["more"] and nightly["sae_id"] == s["sae_id"]
    assert remote.glob(f"tables/scores/dataset=more/sae_id={s['sae_id']}/part-00000.parquet")

    listing = CliRunner().invoke(app, ["artifacts", "--root", url, "--json"])
    assert listing.exit_code == 0 and '"stage": "align"' in listing.output
    shutil.rmtree(cache)
    out = CliRunner().invoke(app, ["query", "--tables", f"{url}/tables", "--format", "csv",
                                   "SELECT count(DISTINCT sample_id) AS n FROM scores WHERE dataset = 'demo-rlaif'"])
    assert out.exit_code == 0 and out.stdout.split() == ["n", "30"], out.output


def test_query_reads_s3_tables_in_place_through_httpfs(bucket, tmp_path):
    """`saev query --tables s3://...` with DuckDB's httpfs: the bucket is read where it is (no local
    mirror), with the credentials and endpoint of the environment, under the same sandbox and
    committed-partitions rule. Runs on the DuckDB that PyPI's httpfs build matches (1.5.5), which
    ``make test`` installs in SAEV_DUCKDB_HTTPFS_PATH; these machines cannot download extensions."""
    import os
    import subprocess
    import sys

    import s3fs

    from tests.conftest import skip_or_fail
    from tests.test_query import add_dataset, write

    site = os.environ.get("SAEV_DUCKDB_HTTPFS_PATH")
    if not site or not os.path.isdir(site):
        skip_or_fail("set SAEV_DUCKDB_HTTPFS_PATH to a directory holding duckdb and duckdb-extension-httpfs (make test does)")
    local = tmp_path / "tables"
    add_dataset(local, "alpha")
    add_dataset(local, "2024", "7")
    write(local, "scores", [{"sample_id": "x", "scorer": "saev", "score": 1.0, "rank": 1, "percentile": 1.0}], "uncommitted")
    url = f"{bucket}/in-place/tables"
    s3fs.S3FileSystem().put(str(local) + "/", url, recursive=True)
    cache = tmp_path / "cache"

    def query(*args):
        env = {**os.environ, "PYTHONPATH": site, "SAEV_CACHE": str(cache)}
        return subprocess.run([sys.executable, "-m", "saev_core", "query", "--tables", url, *args], env=env,
                              capture_output=True, text=True, timeout=600)

    done = query("--format", "json", "SELECT dataset, count(*) AS n, max(score) AS top FROM scores GROUP BY ALL ORDER BY dataset")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"dataset": "2024", "n": 3, "top": 2.5}, {"dataset": "alpha", "n": 3, "top": 2.5}]
    assert "mirroring" not in done.stderr and not cache.exists()  # read in place: nothing was copied here
    joined = query("--format", "csv", "SELECT count(*) AS n FROM sample_features JOIN samples USING (dataset, sample_id)")
    assert joined.returncode == 0 and joined.stdout.split() == ["n", "6"], joined.stderr
    refused = query("SELECT * FROM read_parquet('s3://saev-test/in-place/tables/scores/*/*/*.parquet')")
    assert refused.returncode == 2 and "read_parquet() is not allowed" in refused.stderr


def test_a_shard_done_on_one_machine_is_not_redone_on_another(bucket, world_dir, tmp_path):
    """Shard tasks push their files; the machine that finishes the stage pulls them and resumes."""
    import pyarrow.parquet as pq

    from saev_core.activations.dump import DumpConfig, run_dump
    from saev_core.store.artifacts import stage_key

    url = f"{bucket}/shards"
    conf = {"model": str(world_dir / "model"), "dataset": {"path": str(world_dir / "datasets/demo-rlaif/train.parquet"), "limit": 20},
            "layer": 1, "samples_per_shard": 10, "progress": False}
    key = stage_key("dump", conf, [])
    a = ArtifactStore.at(url, cache=tmp_path / "machine-a")
    run_dump(DumpConfig.model_validate({**conf, "out": str(a.path("dump", key))}), shards=[1])
    a.push_partial("dump", key)
    assert not a.done("dump", key)  # shards alone do not finish a stage

    b = ArtifactStore.at(url, cache=tmp_path / "machine-b")
    seen = {}

    def finish(out):
        seen["pulled"] = sorted(p.name for p in (out / "activations").glob("*.parquet"))
        return run_dump(DumpConfig.model_validate({**conf, "out": str(out)}))

    rec = b.run("dump", conf, [], finish)
    assert seen["pulled"] == ["shard-00001.parquet"] and rec["manifest"]["n_samples"] == 20
    mine = pq.read_table(b.path("dump", key) / "activations/shard-00001.parquet")
    assert mine.equals(pq.read_table(a.path("dump", key) / "activations/shard-00001.parquet"))
    assert a.done("dump", key) and a.fetch("dump", key) == a.path("dump", key)  # A now sees B's finished stage
    assert (a.path("dump", key) / "activations/shard-00000.parquet").exists()


def test_gc_on_the_bucket_drops_a_removed_saes_partitions(bucket, tmp_path):
    from saev_core.io import write_json
    from saev_core.tables.schema import manifest_path

    url = f"{bucket}/gc"
    store = ArtifactStore.at(url, cache=tmp_path / "cache")
    old = store.run("train", {"k": 1}, [], lambda out: (out / "sae").mkdir() or {})
    new = store.run("train", {"k": 2}, [], lambda out: (out / "sae").mkdir() or {})
    for sae_id, rec in (("aaa", old), ("bbb", new)):
        write_json(manifest_path(store.tables, "d", sae_id), {"sae": str(store.root / "train" / rec["key"] / "sae")})
        (store.tables / "scores" / "dataset=d" / f"sae_id={sae_id}").mkdir(parents=True)
        (store.tables / "scores" / "dataset=d" / f"sae_id={sae_id}" / "part-00000.parquet").write_bytes(b"x")
    store.push_tables()
    remote = Mirror(url, tmp_path / "peek")
    assert len(remote.glob("tables/scores/dataset=d/*/part-00000.parquet")) == 2

    shutil.rmtree(tmp_path / "cache")  # gc from a fresh machine (same cache path, as the README asks)
    ArtifactStore.at(url, cache=tmp_path / "cache").gc(keep=[new["key"]])
    assert remote.glob("tables/scores/dataset=d/*/part-00000.parquet") == ["tables/scores/dataset=d/sae_id=bbb/part-00000.parquet"]
    assert not remote.glob(f"train/{old['key']}/*") and remote.glob(f"train/{new['key']}/store.json")

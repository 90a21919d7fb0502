"""The deployment workflow as a user runs it: a real Prefect server on a free port, a process
work pool and worker, `prefect deploy --all` from prefect.yaml, `prefect deployment run --watch`."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from saev_core.store.artifacts import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PG_REASON = "PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` tries that)"


def postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server programs (initdb, pg_ctl), if installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    """A throwaway PostgreSQL cluster on a free local port (trust auth, its own socket directory),
    stopped and removed at the end. Yields Prefect's connection URL, or None where PostgreSQL
    cannot run here (not installed, or root without the `postgres` user that initdb needs)."""
    bin_dir = postgres_bin()
    as_postgres = []
    if bin_dir is not None and os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        except KeyError:
            bin_dir = None
    if bin_dir is None:
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="saev-pg-"))
    if as_postgres:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "600"]
    subprocess.run([*pg_ctl, "-l", str(home / "server.log"), "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run([str(bin_dir / "createdb") if (bin_dir / "createdb").exists() else "createdb", "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "prefect"], check=True, capture_output=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on a free port: on PostgreSQL, the production backend, where it can
    run here; else on SQLite (and the PostgreSQL soak is skipped)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    with postgres() as database:
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
        env.pop("PREFECT_API_KEY", None)
        if database:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
        proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 600  # a loaded machine runs the migrations slowly
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            stop(proc)
            pytest.fail("the Prefect server did not start within 600 s")
        yield {"env": env, "backend": "postgresql" if database else "sqlite", "api": env["PREFECT_API_URL"]}
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group; SIGKILL it if a loaded machine has not let it exit in 120 s."""
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def prefect(env, *args, timeout=600) -> subprocess.CompletedProcess:
    res = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


SOAK_DATASETS, SOAK_ROWS, SOAK_RUNS, SOAK_LIMIT_S = 20, 6, 3, 1800


@pytest.fixture(scope="module")
def deployed(server, world_dir, tmp_path_factory):
    """prefect.yaml deployed to the server, a process worker taking up to SOAK_RUNS runs at once,
    and one full-pipeline run through it (the SAE the soak scores with).

    The worker starts outside the checkout, as on another machine: prefect.yaml's pull step clones
    the repository the `saev_repository` variable names (here this checkout, so its committed HEAD)
    and runs the flows from the clone. The site's paths are Prefect variables that prefect.yaml reads."""
    env = server["env"]
    root = tmp_path_factory.mktemp("deployed") / "artifacts"
    prefect(env, "work-pool", "create", "saev-process", "--type", "process")
    for name, value in {"repository": REPO, "artifacts": root, "registry": root.parent / "registry",
                        "experiments": root.parent / "experiments"}.items():
        prefect(env, "variable", "set", f"saev_{name}", str(value))
    prefect(env, "--no-prompt", "deploy", "--all")
    elsewhere = tmp_path_factory.mktemp("worker")
    # INFO, so that the flow runs' summary lines (which the soak reads) reach the server
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "saev-process", "--limit", str(SOAK_RUNS)],
                              env={**env, "PREFECT_LOGGING_LEVEL": "INFO"}, cwd=elsewhere,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        config = {
            "artifacts": str(root), "model": str(world_dir / "model"),
            "dataset": {"path": str(world_dir / "datasets/demo-rlaif/train.parquet")}, "limit": 20,
            "labels": str(world_dir / "labels.parquet"), "heldout": str(world_dir / "heldout/clean.parquet"),
            "dump": {"progress": False}, "score": {"progress": False}, "eval_samples": 4, "model_eval_samples": 4,
            "sae": {"batch_size": 128, "total_tokens": 128 * 20, "scale_batches": 2, "buffer_rows": 4096, "progress": False},
            "align": {"method": "sft", "max_steps": 1, "batch_size": 4}, "report_latents": 2,
        }
        run = subprocess.run([PREFECT, "deployment", "run", "saev/full-pipeline", "--params", json.dumps({"config": config}),
                              "--watch", "--watch-timeout", "1800"], env=env, cwd=REPO, capture_output=True, text=True, timeout=2400)
        yield {**server, "root": root, "run": run}
    finally:
        stop(worker)


def test_full_pipeline_deployment_runs_on_a_process_worker(deployed):
    env, root, run = deployed["env"], deployed["root"], deployed["run"]
    # the run's own outcome first: a cleanup failure must not hide it
    assert run.returncode == 0 and "Completed" in run.stdout, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    full = json.loads(prefect(env, "deployment", "inspect", "saev/full-pipeline", "--output", "json").stdout)
    nightly = json.loads(prefect(env, "deployment", "inspect", "nightly-rescore/nightly-rescore", "--output", "json").stdout)
    assert full["work_pool_name"] == nightly["work_pool_name"] == "saev-process"
    # the run came from the pull step's clone: the worker started outside the checkout, and the
    # installed package holds no flows or tasks (test_layout), so nothing else could import them
    assert [next(iter(step)) for step in full["pull_steps"]] == ["prefect.deployments.steps.git_clone",
                                                                 "prefect.deployments.steps.set_working_directory"]
    assert full["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == "{{ prefect.variables.saev_repository }}"
    assert full["parameters"]["config"] == {"artifacts": str(root)}
    assert nightly["parameters"]["config"] == {"artifacts": str(root), "registry": str(root.parent / "registry")}
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in nightly["schedules"]] == [("0 2 * * *", "UTC")]
    # overlapping nightly runs wait for each other, on every machine the server serves
    limit = {k: v for k, v in nightly.items() if "concurrency" in k}
    assert (limit["global_concurrency_limit"] or {}).get("limit") == 1, limit
    assert limit["concurrency_options"]["collision_strategy"] == "ENQUEUE", limit
    stages = {r["stage"] for r in ArtifactStore.at(root).list()}
    assert stages == {"dump", "train", "frontier", "eval-sae", "score", "report", "filter", "align", "evaluate"}
    # the stages published Prefect artifacts with their metrics
    arts = prefect(env, "artifact", "ls").stdout
    assert "saev-score" in arts and "saev-dump" in arts
    # a relative store would land in the run's temporary clone: refused by name before any work
    bad = subprocess.run([PREFECT, "deployment", "run", "saev/full-pipeline", "--params", json.dumps({"config": {"artifacts": "data/artifacts"}}),
                          "--watch", "--watch-timeout", "1800"], env=env, cwd=REPO, capture_output=True, text=True, timeout=2400)
    [failed] = api(deployed, "flow_runs/filter", {"flow_runs": {"id": {"any_": [re.search(r"UUID: (\S+)", bad.stdout).group(1)]}}})
    assert failed["state_type"] == "FAILED" and "config.artifacts is the relative path 'data/artifacts'" in failed["state"]["message"], failed


def api(server: dict, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{server['api']}/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def rescore_outcome(server: dict, run_id: str) -> tuple[list[str], list[str]]:
    """(scored by this run, found already scored) from the flow run's summary log line."""
    for _ in range(60):  # logs are shipped in batches, possibly just after the run's final state
        logs = api(server, "logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_DESC", "limit": 50})
        line = next((e["message"] for e in logs if e["message"].startswith("nightly re-scoring with SAE")), None)
        if line:
            break
        time.sleep(2)
    else:
        raise AssertionError(f"flow run {run_id} logged no summary line")
    found = re.search(r"scored (\[.*?\]|none), already scored (\[.*?\]|none)$", line)
    return tuple([] if g == "none" else json.loads(g.replace("'", '"')) for g in found.groups())


def test_nightly_rescore_soak_on_postgresql(deployed, world_dir, tmp_path):
    """SOAK_RUNS nightly-rescore runs started at once over a registry of SOAK_DATASETS datasets, on
    the production backend (the deployment's concurrency limit queues them): every dataset is
    scored exactly once, and no partition is lost, duplicated or partial."""
    if deployed["backend"] != "postgresql":
        from conftest import skip_or_fail

        skip_or_fail(PG_REASON)
    assert deployed["run"].returncode == 0, "the full pipeline run failed (see the deployment test)"
    import pyarrow.parquet as pq
    import yaml

    from saev_core.tables.query import connect

    source = pq.read_table(world_dir / "datasets/demo-rlaif/train.parquet")
    registry = tmp_path / "registry"
    registry.mkdir()
    names = [f"soak-{i:02d}" for i in range(SOAK_DATASETS)]
    for i, name in enumerate(names):
        path = tmp_path / "data" / name / "train.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(source.slice((i * SOAK_ROWS) % (source.num_rows - SOAK_ROWS), SOAK_ROWS), path)
        (registry / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "dataset": {"path": str(path)}}))
    params = json.dumps({"config": {"artifacts": str(deployed["root"]), "registry": str(registry),
                                    "dump": {"progress": False}, "score": {"progress": False}}})
    t0 = time.time()
    ids = [re.search(r"UUID: (\S+)", prefect(deployed["env"], "deployment", "run", "nightly-rescore/nightly-rescore",
                                              "--params", params).stdout).group(1) for _ in range(SOAK_RUNS)]
    while True:
        runs = api(deployed, "flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
        if all(r["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for r in runs):
            break
        assert time.time() - t0 < SOAK_LIMIT_S, f"soak still running after {SOAK_LIMIT_S} s: {[r['state_type'] for r in runs]}"
        time.sleep(5)
    wall = time.time() - t0
    failed = [(r["name"], r["state_type"], r["state"]["message"]) for r in runs if r["state_type"] != "COMPLETED"]
    outcomes = [rescore_outcome(deployed, i) for i in ids]
    print(f"\nsoak: {SOAK_RUNS} nightly-rescore runs started at once, {SOAK_DATASETS} datasets of {SOAK_ROWS} rows, "
          f"backend {deployed['backend']}: {wall:.0f} s wall, {len(failed)} failed, scored per run {[len(s) for s, _ in outcomes]}")
    assert not failed, failed
    scored_by = [n for scored, _ in outcomes for n in scored]
    assert sorted(scored_by) == names  # each dataset scored by exactly one run
    assert all(sorted(n for n in scored + found if n in names) == names for scored, found in outcomes)  # each run saw them all

    store = ArtifactStore.at(deployed["root"])
    scores = [r for r in store.list() if r["stage"] == "score" and r["metrics"]["dataset"] in names]
    assert sorted(r["metrics"]["dataset"] for r in scores) == names  # one score artifact per dataset
    con = connect(store.tables)
    sae_id = {r["metrics"]["sae_id"] for r in scores}
    assert len(sae_id) == 1
    per_scorer = con.sql("SELECT dataset, scorer, count(*), count(DISTINCT sample_id) FROM scores "
                         "WHERE dataset LIKE 'soak-%' GROUP BY ALL").fetchall()
    scorers = {s for _, s, _, _ in per_scorer}
    assert {d for d, *_ in per_scorer} == set(names) and len(per_scorer) == len(names) * len(scorers)
    assert all(n == distinct == SOAK_ROWS for *_, n, distinct in per_scorer), per_scorer
    assert sorted(d for (d,) in con.sql("SELECT DISTINCT dataset FROM feature_stats WHERE dataset LIKE 'soak-%'").fetchall()) == names
    assert not list(store.tables.rglob("*.tmp-*")), "temporary files left behind"

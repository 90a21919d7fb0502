"""The deployment workflow as a user runs it: a real Prefect server on a free port, a process
work pool and worker, `prefect deploy --all` from prefect.yaml, `prefect deployment run --watch`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from saev_core.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_KEY", None)
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the Prefect server did not start within 120 s")
    yield env
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


def test_full_pipeline_deployment_runs_on_a_process_worker(server, world_dir, tmp_path):
    env = server
    prefect(env, "work-pool", "create", "saev-process", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")
    full = json.loads(prefect(env, "deployment", "inspect", "saev/full-pipeline", "--output", "json").stdout)
    nightly = json.loads(prefect(env, "deployment", "inspect", "nightly-rescore/nightly-rescore", "--output", "json").stdout)
    assert full["work_pool_name"] == nightly["work_pool_name"] == "saev-process"
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in nightly["schedules"]] == [("0 2 * * *", "UTC")]
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "saev-process"], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        root = tmp_path / "artifacts"
        config = {
            "artifacts": str(root), "model": str(world_dir / "model"),
            "dataset": {"path": str(world_dir / "datasets/demo-rlaif/train.parquet")}, "limit": 20,
            "labels": str(world_dir / "labels.parquet"), "heldout": str(world_dir / "heldout/clean.parquet"),
            "dump": {"progress": False}, "score": {"progress": False}, "eval_samples": 4,
            "sae": {"batch_size": 128, "total_tokens": 128 * 20, "scale_batches": 2, "buffer_rows": 4096, "progress": False},
            "align": {"method": "sft", "max_steps": 1, "batch_size": 4}, "report_latents": 2,
        }
        run = prefect(env, "deployment", "run", "saev/full-pipeline", "--params", json.dumps({"config": config}),
                      "--watch", "--watch-timeout", "540")
        assert "Completed" in run.stdout, run.stdout[-2000:]
    finally:
        stop(worker)
    stages = {r["stage"] for r in ArtifactStore.at(root).list()}
    assert stages == {"dump", "train", "frontier", "eval-sae", "score", "report", "filter", "align", "evaluate"}
    # the stages published Prefect artifacts with their metrics
    arts = prefect(env, "artifact", "ls").stdout
    assert "saev-score" in arts and "saev-dump" in arts

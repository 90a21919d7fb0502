"""What every stage task shares: running through the artifact store, publishing a Prefect
artifact, Prefect caching on the store's key, and retrying out-of-memory batches smaller."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
from contextlib import nullcontext
from typing import Callable

import torch
from prefect import Task, get_client, task
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.tasks import MaterializingTask

from saev_core.io import is_url
from saev_core.store.artifacts import ArtifactStore, stage_key


GPU_LIMIT = "saev-gpu"


def gpu_limits() -> list[str]:
    """The global concurrency limits a GPU stage holds a slot of while it runs: the cluster's
    (``saev-gpu``: GPU stages at once over every machine) and this machine's
    (``saev-gpu-<hostname>``: its GPUs). Only the ones created on the server hold anything."""
    names = []
    with get_client(sync_client=True) as client:
        for name in (GPU_LIMIT, f"{GPU_LIMIT}-{socket.gethostname()}"):
            try:
                client.read_global_concurrency_limit_by_name(name)
                names.append(name)
            except ObjectNotFound:
                pass
    return names


def gpu_task(name: str, **options) -> Callable[[Callable], Task]:
    """A stage task that runs on a GPU: tagged ``gpu`` and holding a slot of ``gpu_limits()``."""
    def wrap(fn: Callable) -> Task:
        @functools.wraps(fn)
        def on_gpu(*args, **kwargs):
            names = gpu_limits()
            with concurrency(names, occupy=1) if names else nullcontext():
                return fn(*args, **kwargs)

        on_gpu.gpu_slot = True
        return task(name=name, tags=["gpu"], **options)(on_gpu)
    return wrap


def asset_key(store: ArtifactStore, stage: str, key: str) -> str:
    """The Prefect asset of an artifact: its location, a URI (the bucket's, or file:// on a disk)."""
    base = store.location.rstrip("/") if store.remote is not None else store.root.absolute().as_uri()
    return f"{base}/{stage}/{key}"


def publish(rec: dict, root: str | None = None) -> None:
    """Prefect artifacts per finished stage: its metrics as a table, and where its files are; for a
    store on an object store also a link to them (a worker's local cache means nothing in the UI)."""
    stage, key = rec["stage"], rec["key"]
    metrics = [{"metric": k, "value": round(v, 4) if isinstance(v, float) else v if isinstance(v, (int, str)) else json.dumps(v)}
               for k, v in (rec.get("metrics") or {}).items()]
    create_table_artifact(table=metrics or [{"metric": "none", "value": ""}], key=f"saev-{stage}-metrics",
                          description=f"saev {stage} {key}: metrics")
    if root is not None and is_url(root):
        url = f"{root.rstrip('/')}/{stage}/{key}"
        create_link_artifact(link=url, link_text=f"saev {stage} {key}", key=f"saev-{stage}-files", description=f"saev {stage} {key}: files")
        files = f"`{url}` (cached on the worker at `{rec['path']}`)"
    else:
        files = f"`{rec['path']}`"
    md = f"### saev {stage} `{key}`\n\nfiles: {files}\n\nmetrics: the `saev-{stage}-metrics` table\n"
    create_markdown_artifact(markdown=md, key=f"saev-{stage}", description=f"saev {stage} {key}")


def run_stage(root: str, stage: str, config: dict, upstream: list[str], fn: Callable, summary: Callable[[dict], dict] | None = None,
              valid: Callable[[dict], bool] | None = None) -> dict:
    """What every stage task does: run ``fn(out_dir)`` in the store (or find it finished), publish
    its artifact, and return the record."""
    rec = ArtifactStore.at(root).run(stage, config, upstream, fn, summary=summary, valid=valid)
    publish(rec, root)
    return rec


def run_stages(root: str, stage: str, configs: list[dict], upstream: list[str], fn: Callable, summary: Callable[[dict], dict] | None = None,
               valid: Callable[[dict], bool] | None = None) -> list[dict]:
    """``run_stage`` for artifacts built together (``ArtifactStore.run_many``), each published."""
    recs = ArtifactStore.at(root).run_many(stage, configs, upstream, fn, summary=summary, valid=valid)
    for rec in recs:
        publish(rec, root)
    return recs


def with_smaller_batches(fn: Callable[[dict], dict], config: dict, field: str, tries: int = 3) -> dict:
    """Run ``fn(config)``; on a CUDA out-of-memory error retry with ``config[field]`` halved."""
    cfg = dict(config)
    for attempt in range(tries):
        try:
            return fn(cfg)
        except torch.OutOfMemoryError:
            if attempt == tries - 1 or cfg.get(field, 1) <= 1:
                raise
            torch.cuda.empty_cache()
            cfg[field] = max(1, cfg.get(field, 2) // 2)
    raise AssertionError("unreachable")


def run_cached(task: Task, store: ArtifactStore, stage: str, config: dict | list[dict], upstream: list[str], *args,
               valid: Callable[[dict], bool] | None = None):
    """Call ``task(root, config, upstream, *args)`` with Prefect's cache keyed like the store.

    A finished artifact gives a Cached task state on the next run, wherever the store now lies
    (its records' paths are resolved against ``store``); an artifact that is missing
    (never built, removed by `saev artifacts gc`, or no longer ``valid``) refreshes the cache so the
    stage really runs. A list of configs (artifacts a task builds together) is cached as one.
    """
    keys = [stage_key(stage, c, upstream) for c in (config if isinstance(config, list) else [config])]
    key = keys[0] if len(keys) == 1 else hashlib.sha256(" ".join(keys).encode()).hexdigest()[:16]
    if valid is not None:
        store.pull_tables()
    current = all(store.current(stage, k, valid) for k in keys)
    # the stage materializes its artifacts as Prefect assets, with the upstream artifacts as their dependencies
    assets = [asset_key(store, stage, k) for k in keys]
    deps = [asset_key(store, s, u) for u in upstream if (s := store.stage_of(u))]
    task = MaterializingTask(fn=task.fn, assets=assets, asset_deps=deps, name=task.name, tags=task.tags, retries=task.retries,
                             retry_delay_seconds=task.retry_delay_seconds)
    cached = task.with_options(cache_key_fn=lambda *_: f"saev-{stage}-{key}", refresh_cache=not current, persist_result=True)
    # a cached result may come from the store before it moved, or from another worker's cache of a remote one
    return store.relocated(cached(store.location, config, upstream, *args))

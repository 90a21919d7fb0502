"""What every stage task shares: running through the artifact store, publishing a Prefect
artifact, Prefect caching on the store's key, and retrying out-of-memory batches smaller."""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from prefect import Task
from prefect.artifacts import create_markdown_artifact

from saev_core.remote import is_url
from saev_core.store import ArtifactStore, stage_key


def publish(rec: dict, root: str | None = None) -> None:
    """A Markdown artifact per finished stage: its metrics and where its files are (the bucket's
    URL for a store on an object store: a worker's local cache means nothing in the UI)."""
    metrics = rec.get("metrics") or {}
    rows = "\n".join(f"| {k} | {v if not isinstance(v, float) else round(v, 4)} |" for k, v in metrics.items())
    if root is not None and is_url(root):
        url = f"{root.rstrip('/')}/{rec['stage']}/{rec['key']}"
        files = f"`{url}` (cached on the worker at `{rec['path']}`)"
    else:
        files = f"[{rec['path']}](file://{rec['path']})"
    md = (f"### saev {rec['stage']} `{rec['key']}`\n\nfiles: {files}\n\n"
          f"| metric | value |\n| --- | --- |\n{rows}\n")
    create_markdown_artifact(markdown=md, key=f"saev-{rec['stage']}", description=f"saev {rec['stage']} {rec['key']}")


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
    cached = task.with_options(cache_key_fn=lambda *_: f"saev-{stage}-{key}", refresh_cache=not current, persist_result=True)
    # a cached result may come from the store before it moved, or from another worker's cache of a remote one
    return store.relocated(cached(store.location, config, upstream, *args))

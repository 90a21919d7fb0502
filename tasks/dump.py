"""Dump stage: residual-stream activations to Parquet shards."""

from __future__ import annotations


from saev_core.activations.dump import DumpConfig, run_dump
from saev_core.store.artifacts import ArtifactStore, stage_key
from tasks.common import gpu_task, run_stage, with_smaller_batches


@gpu_task("dump-activations", retries=1, retry_delay_seconds=5)
def dump_activations(root: str, config: dict, upstream: list[str]) -> dict:
    """Run (or resume) a dump; complete shards are kept, so a retry only redoes the rest."""
    def dump(out):
        return with_smaller_batches(lambda c: run_dump(DumpConfig.model_validate({**c, "out": str(out)})), config, "batch_size")

    return run_stage(root, "dump", config, upstream, dump,
                     summary=lambda m: {"samples": m["n_samples"], "rejected": m["n_rejected"], **m["rows"]})


@gpu_task("dump-shard", retries=1, retry_delay_seconds=5)
def dump_shard_task(root: str, config: dict, upstream: list[str], shard: int) -> dict:
    """One shard of a dump, into the stage's store directory; mapped over shards so a Dask or Ray
    task runner spreads them over machines. ``dump_activations`` then writes the manifest."""
    store = ArtifactStore.at(root)
    key = stage_key("dump", config, upstream)
    store.pull_inputs(config, upstream)
    m = with_smaller_batches(lambda c: run_dump(DumpConfig.model_validate({**c, "out": str(store.path("dump", key))}), shards=[shard]),
                             config, "batch_size")
    store.push_partial("dump", key)
    return m

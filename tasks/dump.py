"""Dump stage: residual-stream activations to Parquet shards."""

from __future__ import annotations

from prefect import task

from saev_core.dump import DumpConfig, run_dump


@task(name="dump-activations", tags=["gpu"], retries=1, retry_delay_seconds=5)
def dump_activations(config: dict) -> dict:
    """Run (or resume) a dump; complete shards are kept, so a retry only redoes the rest."""
    return run_dump(DumpConfig.model_validate(config))

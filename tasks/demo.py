"""Prepare stage: build (or reuse) the demo world."""

from __future__ import annotations

from prefect import get_run_logger, task

from saev_core.demo.build import DemoConfig, build_world


@task(name="prepare-demo-world", tags=["cpu"])
def prepare_demo(config: dict, out: str) -> dict:
    """Build the demo world at ``out`` unless one with this config is there; return world.json."""
    return build_world(DemoConfig.model_validate(config), out, log=get_run_logger().info)

"""Prepare stage: build (or reuse) the demo world."""

from __future__ import annotations

from prefect import get_run_logger, task

from saev_core.demo.build import DemoConfig, build_world
from saev_core.demo.clip import CLIP_DIR, build_demo_clip
from tasks.common import run_stage


@task(name="prepare-demo-world", tags=["cpu"])
def prepare_demo(root: str, config: dict, upstream: list[str]) -> dict:
    """The demo world (data + model) built from ``config`` in its artifact directory."""
    return run_stage(
        root, "prepare", config, upstream, lambda out: build_world(DemoConfig.model_validate(config), out, log=get_run_logger().info),
        summary=lambda w: {"caption_accuracy": w["pretrain"]["caption_accuracy"], "heldout_accuracy": w["pretrain"]["heldout_accuracy"]})


@task(name="prepare-demo-clip", tags=["cpu"])
def prepare_demo_clip(root: str, config: dict, upstream: list[str]) -> dict:
    """The clip_score baseline's CLIP, trained on the demo world's own image-text pairs."""
    return run_stage(
        root, "clip", config, upstream, lambda out: {**build_demo_clip(config["world"], out / CLIP_DIR), "model": str(out / CLIP_DIR)},
        summary=lambda m: {"final_loss": m["final_loss"], "heldout_retrieval_top1_of_64": m["heldout_retrieval_top1_of_64"]})

"""``saev`` command line. Each command reads an optional YAML/JSON config file, applies flag
overrides (named flags, then ``--set key.sub=value``), validates, and calls the same
saev_core function the Prefect tasks call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from pydantic import BaseModel, ValidationError

app = typer.Typer(help="SAE-V: sparse autoencoders on multimodal LLMs, cross-modal data scoring and filtering.", no_args_is_help=True, pretty_exceptions_enable=False)
demo_app = typer.Typer(help="Build the offline demo world (synthetic dataset + tiny LLaVA).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")

DEFAULT_DEMO_DIR = "data/demo"
SET_HELP = "Override any config field, e.g. --set dataset.limit=100 (repeatable)."
CONFIG_HELP = "YAML or JSON config file; flags override its values."


def load_config_file(path: Path | None) -> dict:
    if path is None:
        return {}
    if not path.exists():
        raise typer.BadParameter(f"config file {path} does not exist", param_hint="--config")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise typer.BadParameter(f"config file {path} must hold a mapping, got {type(data).__name__}", param_hint="--config")
    return data


def apply_set(cfg: dict, assignments: list[str]) -> dict:
    """Apply ``a.b=value`` overrides; values are parsed as YAML (numbers, booleans, lists)."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint="--set")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"{key}: {p} is not a mapping", param_hint="--set")
        node[leaf] = yaml.safe_load(raw)
    return cfg


def merge(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys whose flag was given (value not None)."""
    for key, value in overrides.items():
        if value is None:
            continue
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def validate(model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        fail("invalid config:\n" + "\n".join(lines))


def fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def parse_columns(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        field, sep, col = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected field=column, got {item!r}", param_hint="--column")
        out[field] = col
    return out


@demo_app.command("build")
def demo_build(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    out: Path = typer.Option(Path(DEFAULT_DEMO_DIR), "--out", "-o", help="Directory to write the world to."),
    seed: Optional[int] = typer.Option(None, help="Random seed (everything derives from it)."),
    n_samples: Optional[int] = typer.Option(None, help="Rows in each alignment dataset."),
    pretrain_steps: Optional[int] = typer.Option(None, help="Pretraining steps for the tiny LLaVA."),
    low_quality_fraction: Optional[float] = typer.Option(None, help="Fraction of low-quality rows (default 0.35)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a world with this config exists."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Build the demo world: datasets in three public formats, held-out split, tiny pretrained LLaVA."""
    from saev_core.demo.build import DemoConfig, build_world

    data = merge(load_config_file(config), {"seed": seed, "n_samples": n_samples, "pretrain_steps": pretrain_steps,
                                            "low_quality_fraction": low_quality_fraction})
    cfg = validate(DemoConfig, apply_set(data, set_))
    record = build_world(cfg, out, force=force, log=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps({"world": str(out), **record["pretrain"]}, indent=2))


@app.command("dump")
def dump(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    model: Optional[str] = typer.Option(None, help=f"Hub id or local path of an image-text-to-text model (default: {DEFAULT_DEMO_DIR}/model)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset: Parquet/JSON Lines file or dir, save_to_disk dir, or hub id (default: the demo RLAIF-V set)."),
    format: Optional[str] = typer.Option(None, "--format", help="auto, rlaif_v, align_anything or sft."),
    column: list[str] = typer.Option([], "--column", help="Map a canonical field to a source column, e.g. --column question=prompt."),
    split: Optional[str] = typer.Option(None, help="Dataset split (default: train)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N rows."),
    layer: Optional[int] = typer.Option(None, help="Decoder block whose residual output is captured (default: 2)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory (default: data/runs/dump-<dataset>-L<layer>)."),
    include_response: Optional[bool] = typer.Option(None, "--include-response/--prompt-only", help="Append the response to the prompt."),
    batch_size: Optional[int] = typer.Option(None, help="Samples per forward pass (default: 16)."),
    samples_per_shard: Optional[int] = typer.Option(None, help="Samples per Parquet shard (default: 512)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: auto)."),
    dtype: Optional[str] = typer.Option(None, help="Model compute dtype: auto, float32, bfloat16, float16."),
    act_dtype: Optional[str] = typer.Option(None, help="Stored activation dtype: float16 or float32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output directory made with another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Dump residual-stream activations of image and text tokens to Parquet shards."""
    from saev_core.dump import DumpConfig, run_dump

    data = load_config_file(config)
    data.setdefault("model", f"{DEFAULT_DEMO_DIR}/model")
    data.setdefault("dataset", {"path": f"{DEFAULT_DEMO_DIR}/datasets/demo-rlaif/train.parquet"})
    data.setdefault("layer", 2)
    if dataset is not None:
        data["dataset"] = {"path": dataset}
    if column:
        data["dataset"] = {**data["dataset"], "columns": {**data["dataset"].get("columns", {}), **parse_columns(column)}}
    merge(data, {"model": model, "dataset.format": format, "dataset.split": split, "dataset.limit": limit, "layer": layer,
                 "out": out, "include_response": include_response, "batch_size": batch_size,
                 "samples_per_shard": samples_per_shard, "device": device, "dtype": dtype, "act_dtype": act_dtype})
    apply_set(data, set_)
    if "out" not in data:
        from saev_core.data import DatasetSpec

        name = DatasetSpec.model_validate(data["dataset"]).display_name if isinstance(data["dataset"], dict) else "dataset"
        data["out"] = f"data/runs/dump-{name}-L{data['layer']}"
    cfg = validate(DumpConfig, data)
    try:
        manifest = run_dump(cfg, overwrite=overwrite)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        fail(str(e))
    typer.echo(json.dumps({"out": cfg.out, "n_samples": manifest["n_samples"], "n_rejected": manifest["n_rejected"],
                           "rows": manifest["rows"], "manifest": str(Path(cfg.out) / "manifest.json")}, indent=2))


@app.command("train")
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    activations: Optional[str] = typer.Option(None, help="Dump directory from `saev dump` (default: data/runs/dump-demo-rlaif-L2)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (default: data/runs/sae-<architecture>-<modalities>)."),
    architecture: Optional[str] = typer.Option(None, help="relu (the paper's SAE-V), topk or batchtopk (default: relu)."),
    expansion_factor: Optional[int] = typer.Option(None, help="d_sae = expansion_factor * d_in (default: 16)."),
    k: Optional[int] = typer.Option(None, help="Active latents per token for topk/batchtopk (default: 32)."),
    modalities: Optional[str] = typer.Option(None, help="image+text (SAE-V) or text (the text-only baseline)."),
    batch_size: Optional[int] = typer.Option(None, help="Tokens per step (default: 4096)."),
    total_tokens: Optional[int] = typer.Option(None, help="Training tokens (default: 2,000,000)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default: 5e-5 relu, 2e-4 topk)."),
    l1_coefficient: Optional[float] = typer.Option(None, help="Sparsity penalty lambda for relu (default: 5)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: auto)."),
    seed: Optional[int] = typer.Option(None, help="Seed for init and batch order (default: 0)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run directory made with another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Train an SAE on dumped activations (resumes from the last checkpoint in --out)."""
    from saev_core.train import TrainConfig, train_sae

    data = merge(load_config_file(config), {
        "activations": activations, "out": out, "architecture": architecture, "expansion_factor": expansion_factor,
        "k": k, "modalities": modalities, "batch_size": batch_size, "total_tokens": total_tokens, "lr": lr,
        "l1_coefficient": l1_coefficient, "device": device, "seed": seed})
    apply_set(data, set_)
    data.setdefault("activations", "data/runs/dump-demo-rlaif-L2")
    data.setdefault("out", f"data/runs/sae-{data.get('architecture', 'relu')}-{data.get('modalities', 'image+text').replace('+', '-')}")
    cfg = validate(TrainConfig, data)
    try:
        manifest = train_sae(cfg, overwrite=overwrite)
    except (ValueError, FileNotFoundError, RuntimeError, MemoryError, OSError) as e:
        fail(str(e))
    held = manifest["heldout"]
    typer.echo(json.dumps({"out": cfg.out, "sae": str(Path(cfg.out) / "sae"), "steps": manifest["steps"],
                           "tokens_per_s": round(manifest["tokens_per_s"]),
                           **{f"{m}_{k}": held[m].get(k) for m in ("all", "image", "text") for k in ("fvu", "l0")},
                           "dead_fraction": held["dead_fraction"]}, indent=2))


@app.command("eval-sae")
def eval_sae(
    run: str = typer.Argument(..., help="SAE run directory from `saev train` (or any SAELens checkpoint with --activations)."),
    activations: Optional[str] = typer.Option(None, help="Dump to evaluate on (default: the run's own)."),
    n_samples: int = typer.Option(100, help="Held-out samples for the cross-entropy metrics."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Where to write eval.json and eval.md (default: the run directory)."),
):
    """Evaluate an SAE: reconstruction per modality, firing statistics, CE-loss-recovered."""
    from saev_core.evaluate import evaluate_run

    try:
        report = evaluate_run(run, activations=activations, n_samples=n_samples, device=device, out=out)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        fail(str(e))
    typer.echo(report["markdown"])

"""``saev`` command line: the front door. Each command reads an optional YAML/JSON config file,
applies its flags and then ``--set key.sub=value`` (``saev_core.config_io``), fills in what the
defaults policy supplies (``saev_core.locate``), validates, calls the saev_core function the
Prefect tasks call, and prints.

The flags are declared here rather than generated from the config classes: typer builds every
command's options at each start, and importing the config classes pulls in torch (3-8 s), where
`saev query` now starts in half a second; ``--set`` reaches every field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from pydantic import BaseModel, ValidationError

from saev_core import config_io
from saev_core.config_io import apply_set, describe_errors, load_config_file, merge, parse_pairs, parse_sweep
from saev_core.locate import DEMO_DIR, dump_inputs, labels_of_tables, sae_points, score_inputs, store_of_tables, train_inputs
from saev_core.tables import DEFAULT_TABLES

app = typer.Typer(help="SAE-V: sparse autoencoders on multimodal LLMs, cross-modal data scoring and filtering.", no_args_is_help=True, pretty_exceptions_enable=False)
demo_app = typer.Typer(help="Build the offline demo world (synthetic dataset + tiny LLaVA).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")

SET_HELP = "Override any config field, e.g. --set dataset.limit=100 (repeatable)."
CONFIG_HELP = "YAML or JSON config file; flags override its values."
ERRORS = (ValueError, FileNotFoundError, RuntimeError, MemoryError, OSError)


def fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def validate(model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return config_io.validate(model, data)
    except ValueError as e:
        fail(str(e))


def config_file(path: Path | None, assignments: list[str] = (), overrides: dict | None = None) -> dict:
    """The config file, then the flags given, then --set; a bad file or assignment fails in one line."""
    try:
        return apply_set(merge(load_config_file(path), overrides or {}), list(assignments))
    except ValueError as e:
        fail(str(e))


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@demo_app.command("build")
def demo_build(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    out: Path = typer.Option(Path(DEMO_DIR), "--out", "-o", help="Directory to write the world to."),
    seed: Optional[int] = typer.Option(None, help="Random seed (everything derives from it)."),
    n_samples: Optional[int] = typer.Option(None, help="Rows in each alignment dataset."),
    pretrain_steps: Optional[int] = typer.Option(None, help="Pretraining steps for the tiny LLaVA."),
    low_quality_fraction: Optional[float] = typer.Option(None, help="Fraction of low-quality rows (default 0.35)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a world with this config exists."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Build the demo world: datasets in three public formats, held-out split, tiny pretrained LLaVA."""
    from saev_core.demo.build import DemoConfig, build_world

    cfg = validate(DemoConfig, config_file(config, set_, {"seed": seed, "n_samples": n_samples, "pretrain_steps": pretrain_steps,
                                                        "low_quality_fraction": low_quality_fraction}))
    record = build_world(cfg, out, force=force, log=lambda m: typer.echo(m, err=True))
    _echo_json({"world": str(out), **record["pretrain"]})


@app.command("dump")
def dump(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    model: Optional[str] = typer.Option(None, help=f"Hub id or local path of an image-text-to-text model (default: {DEMO_DIR}/model)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset: Parquet/JSON Lines file or dir, save_to_disk dir, or hub id (default: the demo RLAIF-V set)."),
    format: Optional[str] = typer.Option(None, "--format", help="auto, rlaif_v, align_anything or sft."),
    column: list[str] = typer.Option([], "--column", help="Map a canonical field to a source column, e.g. --column question=prompt."),
    split: Optional[str] = typer.Option(None, help="Dataset split (default: train)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N rows."),
    layer: Optional[int] = typer.Option(None, help="Decoder block whose residual output is captured (default: 0, the demo model's shared block; a real model wants a middle one, e.g. 16 of 32)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory (default: data/runs/dump-<dataset>-L<layer>)."),
    include_response: Optional[bool] = typer.Option(None, "--include-response/--prompt-only", help="Append the response to the prompt."),
    batch_size: Optional[int] = typer.Option(None, help="Samples per forward pass (default: 16)."),
    samples_per_shard: Optional[int] = typer.Option(None, help="Samples per Parquet shard (default: 512)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: auto)."),
    dtype: Optional[str] = typer.Option(None, help="Model compute dtype: auto, float32, bfloat16, float16."),
    act_dtype: Optional[str] = typer.Option(None, help="Stored activation dtype: float16 or float32."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja chat template file, for a processor that ships none (e.g. PaliGemma)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output directory made with another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Dump residual-stream activations of image and text tokens to Parquet shards."""
    from saev_core.dump import DumpConfig, run_dump

    data = config_file(config)
    if dataset is not None:
        data["dataset"] = {"path": dataset}
    try:
        columns = {f"dataset.columns.{k}": v for k, v in parse_pairs(column, "--column", "field=column").items()}
        data = apply_set(merge(data, {"dataset.format": format, "dataset.split": split, "dataset.limit": limit, **columns,
                                    "model": model, "layer": layer, "out": out, "include_response": include_response, "batch_size": batch_size,
                                    "samples_per_shard": samples_per_shard, "device": device, "dtype": dtype, "act_dtype": act_dtype,
                                    "chat_template": chat_template}), set_)
    except ValueError as e:
        fail(str(e))
    cfg = validate(DumpConfig, dump_inputs(data))
    try:
        manifest = run_dump(cfg, overwrite=overwrite)
    except ERRORS as e:
        fail(str(e))
    _echo_json({"out": cfg.out, "n_samples": manifest["n_samples"], "n_rejected": manifest["n_rejected"],
                "rows": manifest["rows"], "manifest": str(Path(cfg.out) / "manifest.json")})


@app.command("train")
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    activations: Optional[str] = typer.Option(None, help="Dump directory from `saev dump` (default: the newest dump `make run` made in data/artifacts; else data/runs/dump-demo-rlaif-L0)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (default: data/runs/sae-<architecture>-<modalities>)."),
    architecture: Optional[str] = typer.Option(None, help="relu (the paper's SAE-V), topk, batchtopk, matryoshka_batchtopk or jumprelu (default: relu)."),
    expansion_factor: Optional[int] = typer.Option(None, help="d_sae = expansion_factor * d_in (default: 16)."),
    k: Optional[int] = typer.Option(None, help="Active latents per token for topk/batchtopk (default: 32)."),
    modalities: Optional[str] = typer.Option(None, help="image+text (SAE-V) or text (the text-only baseline)."),
    batch_size: Optional[int] = typer.Option(None, help="Tokens per step (default: 4096)."),
    total_tokens: Optional[int] = typer.Option(None, help="Training tokens (default: 2,000,000)."),
    optimizer: Optional[str] = typer.Option(None, help="adam or signum (default: adam)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: 5e-5 for relu with adam, the paper's; else scaled with d_sae and batch size, see saev_core/optim.py)."),
    l1_coefficient: Optional[float] = typer.Option(None, help="Sparsity penalty lambda for relu (default: 5)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: auto)."),
    seed: Optional[int] = typer.Option(None, help="Seed for init and batch order (default: 0)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run directory made with another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    sweep: list[str] = typer.Option([], "--sweep", help="FIELD=V1,V2,...: one SAE per value, all trained in one pass over the data, "
                                    "each in <out>/FIELD=V (repeat for a grid: every combination). E.g. --sweep k=16,32,64."),
):
    """Train an SAE on dumped activations (resumes from the last checkpoint in --out)."""
    from saev_core.distributed import is_main_process
    from saev_core.train import TrainConfig, headline, sweep_configs, train_sae, train_saes

    cfg = validate(TrainConfig, train_inputs(config_file(config, set_, {
        "activations": activations, "out": out, "architecture": architecture, "expansion_factor": expansion_factor,
        "k": k, "modalities": modalities, "batch_size": batch_size, "total_tokens": total_tokens, "optimizer": optimizer, "lr": lr,
        "l1_coefficient": l1_coefficient, "device": device, "seed": seed})))
    try:
        if sweep:
            cfgs = sweep_configs(cfg.model_dump(), parse_sweep(sweep))
            manifests = train_saes(cfgs, overwrite=overwrite)
        else:
            manifest = train_sae(cfg, overwrite=overwrite)
    except ValidationError as e:
        fail("invalid sweep value: " + "; ".join(describe_errors(e)))
    except ERRORS as e:
        fail(str(e))
    if not is_main_process():  # under torchrun / accelerate launch, process 0 reports
        return
    if sweep:
        _echo_json([{"out": c.out, **headline(m)} for c, m in zip(cfgs, manifests)])
    else:
        _echo_json({"out": cfg.out, "sae": str(Path(cfg.out) / "sae"), "steps": manifest["steps"],
                    "tokens_per_s": round(manifest["tokens_per_s"]), **headline(manifest)})


@app.command("eval-sae")
def eval_sae(
    run: str = typer.Argument(..., help="SAE run directory from `saev train` (or any SAELens checkpoint with --activations)."),
    activations: Optional[str] = typer.Option(None, help="Dump to evaluate on (default: the run's own)."),
    n_samples: int = typer.Option(100, help="Held-out samples for the cross-entropy metrics."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Where to write eval.json and eval.md (default: the run directory)."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja chat template file (default: the one the dump used, else the processor's)."),
):
    """Evaluate an SAE: reconstruction per modality, firing statistics, CE-loss-recovered."""
    from saev_core.sae_eval import evaluate_run

    try:
        report = evaluate_run(run, activations=activations, n_samples=n_samples, device=device, out=out, chat_template=chat_template)
    except ERRORS as e:
        fail(str(e))
    typer.echo(report["markdown"])


@app.command("export-sae")
def export_sae(
    runs: list[str] = typer.Argument(..., help="`saev train` run directories (several: one multi-layer release)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder to write (replaced if it exists)."),
    repo_id: Optional[str] = typer.Option(None, help="Hub repo the folder is for, e.g. my-org/llava-saes (named in the card)."),
    release: Optional[str] = typer.Option(None, help="SAELens release name for pretrained_saes.yaml (default: from --repo-id)."),
):
    """Write a hub-ready SAE folder: SAELens files, a model card, and for several SAEs a pretrained_saes.yaml entry.

    Push it with huggingface_hub.upload_folder(folder_path=OUT, repo_id=...); `saev score --sae OUT` and
    sae_lens.SAE.load_from_disk(OUT) read it back.
    """
    from saev_core.export import export_saes

    try:
        res = export_saes(runs, out, repo_id=repo_id, release=release)
    except ERRORS as e:
        fail(str(e))
    _echo_json(res)


@app.command("score")
def score(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    activations: Optional[str] = typer.Option(None, help="Dump directory from `saev dump` (default: the SAE's own dump when the SAE is the store's; else data/runs/dump-demo-rlaif-L0)."),
    sae: Optional[str] = typer.Option(None, help="`saev train` run or SAELens checkpoint directory (default: the newest SAE `make run` trained in data/artifacts; else data/runs/sae-relu-image-text)."),
    tables: Optional[str] = typer.Option(None, help="Feature tables root (default: data/artifacts/tables, where `make run` puts them)."),
    dataset_name: Optional[str] = typer.Option(None, help="Partition name (default: the dump's dataset name)."),
    scorer: list[str] = typer.Option([], "--scorer", help="Scorer to compute (repeatable; default: every registered scorer but clip_score, which --clip-model adds; the list: docs/stages.md)."),
    tau: Optional[float] = typer.Option(None, help="Co-occurrence threshold: a latent counts where its activation > tau (default: 0)."),
    agreement_tau: Optional[float] = typer.Option(None, "--agreement-tau", help="The agreement scorer's firing threshold (default: 0.5, chosen on the demo's validation world; choose it on a validation split for another SAE)."),
    agreement_refits: Optional[int] = typer.Option(None, "--agreement-refits", help="Rounds of recounting the agreement scorer's co-firing on its own top half (default: 2, chosen on the demo's validation world; 0 counts once over every sample)."),
    reference_samples: Optional[int] = typer.Option(None, help="Reference subset size for the cross-modal weights (default: 1000)."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP/SigLIP hub id or path: adds the clip_score baseline (e.g. openai/clip-vit-base-patch32)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: auto)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the random scorer and the reference subset (default: 0)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a partition scored under another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Encode a dump through an SAE and write the feature tables and per-sample scores.

    Example: saev score --activations runs/rlaif-L16 --sae runs/sae-relu --tables data/artifacts/tables
    """
    from saev_core.score_dataset import ScoreConfig, run_scoring

    cfg = validate(ScoreConfig, score_inputs(config_file(config, set_, {
        "activations": activations, "sae": sae, "tables": tables, "dataset_name": dataset_name, "scorers": scorer or None, "tau": tau,
        "agreement_tau": agreement_tau, "agreement_refits": agreement_refits, "reference_samples": reference_samples,
        "clip_model": clip_model, "device": device, "seed": seed})))
    try:
        m = run_scoring(cfg, overwrite=overwrite)
    except ERRORS as e:
        fail(str(e))
    _echo_json({"dataset": m["dataset"], "sae_id": m["sae_id"], "n_samples": m["n_samples"],
                "n_cross_modal_latents": m["n_cross_modal"], "feature_kinds": m["feature_kinds"],
                "tables": m["tables"], "query": f"saev query --tables {m['tables']} \"SELECT * FROM scores LIMIT 10\""})


@app.command("filter")
def filter_(
    out: str = typer.Option(..., "--out", "-o", help="Output directory of the filtered dataset."),
    scorer: str = typer.Option("saev", help="Scorer to rank by."),
    top_fraction: Optional[float] = typer.Option(None, help="Keep this fraction (0-1] of the ranked samples."),
    top_k: Optional[int] = typer.Option(None, help="Keep this many samples."),
    dataset: list[str] = typer.Option([], "--dataset", help="Dataset to draw from (repeatable; default: all scored)."),
    per_dataset: bool = typer.Option(False, "--per-dataset", help="Apply k / fraction to each dataset separately."),
    sae_id: Optional[str] = typer.Option(None, help="SAE whose scores to use (default: the only one)."),
    tables: str = typer.Option(DEFAULT_TABLES, help="Feature tables root."),
):
    """Keep the top-scoring samples as a dataset TRL's SFTTrainer / DPOTrainer load directly.

    Example: saev filter --scorer saev --top-fraction 0.5 --out data/filtered/saev-50
    """
    from saev_core.filter import FilterConfig, run_filter

    cfg = validate(FilterConfig, {"tables": tables, "out": out, "scorer": scorer, "datasets": dataset or None,
                                  "sae_id": sae_id, "top_fraction": top_fraction, "top_k": top_k, "per_dataset": per_dataset})
    try:
        m = run_filter(cfg)
    except ERRORS as e:
        fail(str(e))
    _echo_json({"out": cfg.out, "kept": m["n_kept"], "kept_per_dataset": m["kept_per_dataset"], "splits": m["splits"],
                "load": f"datasets.load_dataset('parquet', data_files='{cfg.out}/sft/train.parquet', split='train')"})


@app.command("eval-scores")
def eval_scores(
    labels: Optional[str] = typer.Option(None, help="Parquet with sample_id, is_clean, corruption (evaluation only; default: the demo world's)."),
    dataset: str = typer.Option("demo-rlaif", help="Scored dataset to evaluate."),
    sae_id: Optional[str] = typer.Option(None, help="SAE whose scores to evaluate (default: the only one)."),
    tables: str = typer.Option(DEFAULT_TABLES, help="Feature tables root."),
):
    """AUROC of each scorer for clean vs low-quality samples, overall and per corruption kind."""
    from saev_core.quality import render_quality, scorer_quality
    from saev_core.query import open_views, the_sae

    labels = labels or labels_of_tables(tables)
    try:
        con = open_views(tables)
        typer.echo(render_quality(scorer_quality(con, labels, dataset, the_sae(con, tables, sae_id, dataset=dataset))))
    except ERRORS as e:
        fail(str(e))


@app.command("query")
def query(
    sql: str = typer.Argument(..., help="One SELECT over the views sample_features, feature_stats, scores, samples."),
    tables: str = typer.Option(DEFAULT_TABLES, "--tables", help="Tables root written by `saev score`, or its fsspec URL (s3://bucket/saev/tables: mirrored locally first)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every row to a .csv or .parquet file (atomically) instead of printing."),
    param: list[str] = typer.Option([], "--param", "-p", help="Bind $name to a value, e.g. --param dataset=rlaif-v (repeatable). Values are text; DuckDB casts them where the type is clear (LIMIT $k, col = $x), else write $k::INTEGER."),
    limit: int = typer.Option(50, "--limit", min=0, help="Rows printed (0: all); the count of the others is reported."),
    format: str = typer.Option("table", "--format", help="Printed format: table, csv or json."),
):
    """Run read-only SQL over the feature tables with DuckDB.

    Every dataset under --tables is visible, with `dataset` and `sae_id` columns.

    Statements that write, change settings or read other files are refused (exit 2).

    Pass values with --param; single-quote the SQL so the shell leaves $name alone.

    Examples:

      saev query "SELECT dataset, scorer, count(*) FROM scores GROUP BY ALL"

      saev query 'SELECT sample_id, score FROM scores WHERE dataset = $dataset
        AND scorer = $scorer ORDER BY score DESC LIMIT $k' \\
        --param dataset=rlaif-v --param scorer=saev --param k=100

      saev query "SELECT * FROM feature_stats ORDER BY cross_modal_weight DESC" \\
        --out cross_modal.parquet
    """
    import duckdb
    import pyarrow as pa

    from saev_core.query import QueryRefused, connect, format_rows, local_tables, read_head, run_query, write_result

    if format not in ("table", "csv", "json"):
        raise typer.BadParameter(f"expected table, csv or json, got {format!r}", param_hint="--format")
    con = None
    try:
        params = parse_pairs(param, "--param")
        con = connect(local_tables(tables))
        reader = run_query(con, sql, params)
        if out is not None:
            typer.echo(f"wrote {write_result(reader, out)} rows to {out}")
            return
        shown, n = read_head(reader, limit)
    except (QueryRefused, FileNotFoundError, ValueError) as e:
        fail(str(e))
    except (duckdb.Error, pa.ArrowException, OSError) as e:
        fail(str(e).strip().splitlines()[0])
    finally:
        if con is not None:
            con.close()
    hidden = n - shown.num_rows
    note = f"({n} row{'' if n == 1 else 's'}" + (f", {hidden} not shown: raise --limit or use --out" if hidden else "") + ")"
    typer.echo(format_rows(shown, format))
    if format == "table" or hidden:
        typer.echo(note, err=format != "table")


@app.command("align")
def align(
    data: str = typer.Option(..., help="Filter artifact directory from `saev filter`."),
    out: str = typer.Option(..., "--out", "-o", help="Where the aligned model (save_pretrained) and manifest go."),
    model: str = typer.Option(f"{DEMO_DIR}/model", help="Base model: hub id or local path."),
    method: str = typer.Option("sft", help="sft (SFTTrainer) or dpo (DPOTrainer)."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja chat template file, for a processor that ships none (e.g. PaliGemma)."),
    set_: list[str] = typer.Option([], "--set", help="Override any AlignConfig field, e.g. --set lr=1e-5 --set epochs=2."),
):
    """Align the base model on a filtered subset with TRL (multi-GPU: `accelerate launch -m saev_core align ...`).

    Example: saev align --data data/filtered/saev-50 --method dpo --out data/aligned/saev-50-dpo
    """
    from saev_core.align import AlignConfig, run_alignment
    from saev_core.distributed import is_main_process

    cfg = validate(AlignConfig, config_file(None, set_, {"data": data, "out": out, "model": model, "method": method, "chat_template": chat_template}))
    try:
        m = run_alignment(cfg)
    except ERRORS as e:
        fail(str(e))
    if not is_main_process():  # under accelerate launch, process 0 reports
        return
    _echo_json({k: m[k] for k in ("method", "n_train_rows", "steps", "first_loss", "last_loss", "seconds")} | {"model": str(Path(cfg.out) / "model")})


@app.command("evaluate")
def evaluate(
    model: str = typer.Argument(..., help="Saved model directory (or hub id) to evaluate."),
    heldout: str = typer.Option(f"{DEMO_DIR}/heldout/clean.parquet", help="Held-out dataset (any supported format)."),
    n_samples: Optional[int] = typer.Option(None, help="Rows to evaluate (default: all)."),
    reference: Optional[str] = typer.Option(None, help="Reference model for the DPO reward margin (e.g. the base model)."),
    beta: float = typer.Option(0.1, help="DPO beta for the reward margin."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja chat template file, for a processor that ships none (e.g. PaliGemma)."),
):
    """Answer accuracy, response NLL, preference accuracy and reward margin of a model on a held-out split."""
    from saev_core.data import DatasetSpec
    from saev_core.model_eval import evaluate_model

    try:
        report = evaluate_model(model, DatasetSpec(path=heldout), n_samples, reference=reference, beta=beta, device=device,
                                chat_template=chat_template)
    except ERRORS as e:
        fail(str(e))
    _echo_json(report)


@app.command("experiment")
def experiment(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Experiment directory (default: data/runs/experiment)."),
    method: Optional[str] = typer.Option(None, help="sft or dpo (default: sft)."),
    set_: list[str] = typer.Option([], "--set", help="Override any ExperimentConfig field, e.g. --set fractions=[0.25,0.5,1.0]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the runs in --out made from another model, scores or training config."),
):
    """Performance vs data kept: filter -> align -> evaluate for every scorer and fraction, with seeds.

    Writes results.jsonl, table.md and plot.png; a rerun with the same model, scores and training
    config resumes, skipping finished runs (the grid may grow).
    """
    from saev_core.experiment import ExperimentConfig, run_experiment
    from saev_core.locate import experiment_inputs

    cfg = validate(ExperimentConfig, config_file(config, set_, {"out": out, "method": method}))
    try:
        summary = run_experiment(experiment_inputs(cfg), overwrite=overwrite)
    except ERRORS as e:
        fail(str(e))
    typer.echo(summary["markdown"])
    typer.echo(f"\nplot: {summary['plot']}\nresults: {summary['results']}")


artifacts_app = typer.Typer(help="The artifact store: what the pipeline has built (list, gc).", invoke_without_command=True)
app.add_typer(artifacts_app, name="artifacts")


@artifacts_app.callback()
def artifacts_list(
    ctx: typer.Context,
    root: str = typer.Option("data/artifacts", help="Artifact store root."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """List finished artifacts: stage, key, created, config summary, metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from saev_core.store import ArtifactStore

    rows = ArtifactStore.at(root).list()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo(f"no artifacts under {root}")
        return
    for r in rows:
        metrics = ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in (r["metrics"] or {}).items())
        typer.echo(f"{r['stage']:<10} {r['key']}  {r['created']}  {metrics}\n{'':<10} {r['config']}")


@artifacts_app.command("gc")
def artifacts_gc(
    root: str = typer.Option("data/artifacts", help="Artifact store root."),
    keep: list[str] = typer.Option([], "--keep", help="Key to keep with everything upstream (repeatable; default: every final artifact)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed."),
):
    """Remove unfinished stage directories and artifacts no kept artifact depends on."""
    from saev_core.store import ArtifactStore

    try:
        removed = ArtifactStore.at(root).gc(keep or None, dry_run=dry_run)
    except ValueError as e:
        fail(str(e))
    typer.echo("\n".join(removed) if removed else "nothing to remove")


@app.command("report")
def report(
    out: str = typer.Option("data/report", "--out", "-o", help="Directory of the HTML report (open index.html)."),
    dataset: str = typer.Option("demo-rlaif", help="Scored dataset to browse."),
    sae_id: Optional[str] = typer.Option(None, help="SAE whose tables to browse (default: the only one)."),
    tables: str = typer.Option(DEFAULT_TABLES, help="Feature tables root."),
    latents: int = typer.Option(100, help="Latent pages to render (the top ones by cross-modal weight)."),
    top_samples: int = typer.Option(8, help="Top-activating samples per latent page."),
    samples: int = typer.Option(40, help="Sample pages for the top samples by saev score (plus those shown on latent pages)."),
    labels: Optional[str] = typer.Option(None, help="Evaluation labels to split score distributions into clean vs low-quality."),
    experiment: Optional[str] = typer.Option(None, help="A `saev experiment` directory whose plot to include."),
):
    """Write a static, self-contained HTML feature browser (works from file://, no network)."""
    from saev_core.query import open_views, the_sae
    from saev_core.report import write_report

    try:
        sae_id = the_sae(open_views(tables), tables, sae_id, table="feature_stats", dataset=dataset)
        store = store_of_tables(tables)
        res = write_report(tables, out, dataset, sae_id, latents, top_samples, samples, labels,
                           sae_points(store) if store else None, experiment)
    except ERRORS as e:
        fail(str(e))
    _echo_json(res)

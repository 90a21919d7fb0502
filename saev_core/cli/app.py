"""``saev`` command line: the front door. Each command reads an optional YAML/JSON config file,
applies its flags and then ``--set key.sub=value`` (``saev_core.cli.config_io``), fills in what the
defaults policy supplies (``saev_core.cli.locate``), validates, calls the saev_core function the
Prefect tasks call, and prints.

A stage's flags are generated from its config class (``saev_core.cli.options``); the classes
live in ``saev_core.configs``, which imports only pydantic, so every command still starts fast."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from saev_core.cli.options import config_options
from saev_core.cli.config_io import apply_set, describe_errors, merge, parse_pairs, parse_sweep, read_config, validate
from saev_core.configs import (DEFAULT_SCORER, DEFAULT_STORE, DEFAULT_TABLES, AlignConfig, DatasetFormat, DemoConfig, DumpConfig, ExperimentConfig, FilterConfig,
                               ScoreConfig, TrainConfig)
from saev_core.cli.locate import (DEMO_DIR, FILLED_IN, align_inputs, dump_inputs, experiment_inputs, labels_of_tables, sae_points,
                              score_inputs, store_of_tables, train_inputs)

app = typer.Typer(help="SAE-V: sparse autoencoders on multimodal LLMs, cross-modal data scoring and filtering.", no_args_is_help=True, pretty_exceptions_enable=False)
demo_app = typer.Typer(help="Build the offline demo world (synthetic dataset + tiny LLaVA).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")

SET_HELP = "Override any config field, nested ones too: --set key.sub=value (repeatable; applied after the flags)."
CONFIG_HELP = "YAML or JSON config file; flags override its values."
ERRORS = (ValueError, FileNotFoundError, RuntimeError, MemoryError, OSError)


def fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def command(group: typer.Typer, name: str):
    """Register a command whose library errors (a bad path, model or value) print as one line, exit 2."""
    def register(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort):  # click's are RuntimeErrors too
                raise
            except ERRORS as e:
                fail(str(e))
        return group.command(name)(run)
    return register


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@command(demo_app, "build")
@config_options(DemoConfig)
def demo_build(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    out: Path = typer.Option(Path(DEMO_DIR), "--out", "-o", help="Directory to write the world to."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a world with this config exists."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    flags: dict = None,
):
    """Build the demo world: datasets in three public formats, held-out split, tiny pretrained LLaVA."""
    from saev_core.demo.build import build_world

    cfg = validate(DemoConfig, read_config(config, set_, flags))
    record = build_world(cfg, out, force=force, log=lambda m: typer.echo(m, err=True))
    _echo_json({"world": str(out), **record["pretrain"]})


@command(app, "dump")
@config_options(DumpConfig, skip=("chat_template_sha256",), help=FILLED_IN["dump"])
def dump(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    dataset: Optional[str] = typer.Option(None, help="Dataset: Parquet/JSON Lines file or dir, save_to_disk dir, or hub id (default: the demo RLAIF-V set)."),
    format: Optional[DatasetFormat] = typer.Option(None, "--format", help="How to read the rows (default: auto, by columns)."),
    column: list[str] = typer.Option([], "--column", help="Map a canonical field to a source column, e.g. --column question=prompt."),
    split: Optional[str] = typer.Option(None, help="Dataset split (default: train)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N rows."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output directory made with another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    flags: dict = None,
):
    """Dump residual-stream activations of image and text tokens to Parquet shards."""
    from saev_core.activations.dump import run_dump

    data = read_config(config) | ({"dataset": {"path": dataset}} if dataset is not None else {})
    columns = {f"dataset.columns.{k}": v for k, v in parse_pairs(column, "--column", "field=column").items()}
    data = apply_set(merge(data, {"dataset.format": format, "dataset.split": split, "dataset.limit": limit, **columns, **flags}), set_)
    cfg = validate(DumpConfig, dump_inputs(data))
    manifest = run_dump(cfg, overwrite=overwrite)
    _echo_json({"out": cfg.out, "n_samples": manifest["n_samples"], "n_rejected": manifest["n_rejected"],
                "rows": manifest["rows"], "manifest": str(Path(cfg.out) / "manifest.json")})


@command(app, "train")
@config_options(TrainConfig, help=FILLED_IN["train"])
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run directory made with another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    sweep: list[str] = typer.Option([], "--sweep", help="FIELD=V1,V2,...: one SAE per value, all trained in one pass over the data, "
                                    "each in <out>/FIELD=V (repeat for a grid: every combination). E.g. --sweep k=16,32,64."),
    flags: dict = None,
):
    """Train an SAE on dumped activations (resumes from the last checkpoint in --out)."""
    from saev_core.sae.distributed import is_main_process
    from saev_core.sae.train import headline, sweep_configs, train_sae, train_saes

    cfg = validate(TrainConfig, train_inputs(read_config(config, set_, flags)))
    try:
        if sweep:
            cfgs = sweep_configs(cfg.model_dump(), parse_sweep(sweep))
            manifests = train_saes(cfgs, overwrite=overwrite)
        else:
            manifest = train_sae(cfg, overwrite=overwrite)
    except ValidationError as e:
        fail("invalid sweep value: " + "; ".join(describe_errors(e)))
    if not is_main_process():  # under torchrun / accelerate launch, process 0 reports
        return
    if sweep:
        _echo_json([{"out": c.out, **headline(m)} for c, m in zip(cfgs, manifests)])
    else:
        _echo_json({"out": cfg.out, "sae": str(Path(cfg.out) / "sae"), "steps": manifest["steps"],
                    "tokens_per_s": round(manifest["tokens_per_s"]), **headline(manifest)})


@command(app, "eval-sae")
def eval_sae(
    run: str = typer.Argument(..., help="SAE run directory from `saev train` (or any SAELens checkpoint with --activations)."),
    activations: Optional[str] = typer.Option(None, help="Dump to evaluate on (default: the run's own)."),
    n_samples: int = typer.Option(100, help="Held-out samples for the cross-entropy metrics."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Where to write eval.json and eval.md (default: the run directory)."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja chat template file (default: the one the dump used, else the processor's)."),
):
    """Evaluate an SAE: reconstruction per modality, firing statistics, CE-loss-recovered."""
    from saev_core.sae.evaluate import evaluate_run

    typer.echo(evaluate_run(run, activations=activations, n_samples=n_samples, device=device, out=out,
                            chat_template=chat_template)["markdown"])


@command(app, "export-sae")
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
    from saev_core.sae.export import export_saes

    _echo_json(export_saes(runs, out, repo_id=repo_id, release=release))


@command(app, "export-dataset")
def export_dataset(
    folder: Path = typer.Argument(..., help="A `saev filter` output folder (filter/<key>/data in the artifact store)."),
    repo_id: Optional[str] = typer.Option(None, help="Hub dataset repo it is for, e.g. my-org/rlaif-v-saev-50 (named in the card)."),
):
    """Make a filter folder Hub-ready: (re)write its dataset card (configs `sft` and `dpo`) and print the push call.

    Push it with huggingface_hub.upload_folder(folder_path=FOLDER, repo_id=..., repo_type="dataset");
    datasets.load_dataset(FOLDER or the repo, "sft") reads it back.
    """
    from saev_core.alignment.dataset_card import configs_of, write_card

    if not (folder / "manifest.json").exists():
        fail(f"{folder} is not a `saev filter` output folder (no manifest.json); pass the folder `saev filter --out` wrote")
    card, configs = write_card(folder, repo_id), configs_of(folder)
    repo = repo_id or "<user>/<dataset>"
    _echo_json({"folder": str(folder), "card": str(card), "configs": configs,
                "upload": f"huggingface_hub.upload_folder(folder_path='{folder}', repo_id='{repo}', repo_type='dataset')",
                "load": f"datasets.load_dataset('{repo}', '{configs[0]}', split='train')"})


@command(app, "score")
@config_options(ScoreConfig, names={"scorers": "scorer"}, help=FILLED_IN["score"])
def score(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a partition scored under another config."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    flags: dict = None,
):
    """Encode a dump through an SAE and write the feature tables and per-sample scores.

    Example: saev score --activations runs/rlaif-L16 --sae runs/sae-relu --tables data/artifacts/tables
    """
    from saev_core.scoring.run import run_scoring

    cfg = validate(ScoreConfig, score_inputs(read_config(config, set_, flags)))
    m = run_scoring(cfg, overwrite=overwrite)
    _echo_json({"dataset": m["dataset"], "sae_id": m["sae_id"], "n_samples": m["n_samples"],
                "n_cross_modal_latents": m["n_cross_modal"], "feature_kinds": m["feature_kinds"],
                "tables": m["tables"], "query": f"saev query --tables {m['tables']} \"SELECT * FROM scores LIMIT 10\""})


@command(app, "filter")
@config_options(FilterConfig, names={"datasets": "dataset"})
def filter_(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    flags: dict = None,
):
    """Keep the top-scoring samples as a dataset TRL's SFTTrainer / DPOTrainer load directly.

    Example: saev filter --scorer saev --top-fraction 0.5 --out data/filtered/saev-50
    """
    from saev_core.alignment.filter import run_filter

    cfg = validate(FilterConfig, read_config(config, set_, flags))
    m = run_filter(cfg)
    _echo_json({"out": cfg.out, "kept": m["n_kept"], "kept_per_dataset": m["kept_per_dataset"], "splits": m["splits"],
                "load": f"datasets.load_dataset('parquet', data_files='{cfg.out}/sft/train.parquet', split='train')"})


@command(app, "eval-scores")
def eval_scores(
    labels: Optional[str] = typer.Option(None, help="Parquet with sample_id, is_clean, corruption (evaluation only; default: the demo world's)."),
    dataset: str = typer.Option("demo-rlaif", help="Scored dataset to evaluate."),
    sae_id: Optional[str] = typer.Option(None, help="SAE whose scores to evaluate (default: the only one)."),
    tables: str = typer.Option(DEFAULT_TABLES, help="Feature tables root."),
):
    """AUROC of each scorer for clean vs low-quality samples, overall and per corruption kind."""
    from saev_core.scoring.quality import render_quality, scorer_quality
    from saev_core.tables.query import open_views, the_sae

    labels = labels or labels_of_tables(tables)
    con = open_views(tables)
    typer.echo(render_quality(scorer_quality(con, labels, dataset, the_sae(con, tables, sae_id, dataset=dataset))))


@command(app, "query")
def query(
    sql: Optional[str] = typer.Argument(None, help="One SELECT over the views sample_features, feature_stats, scores, samples."),
    tables: str = typer.Option(DEFAULT_TABLES, "--tables", help="Tables root written by `saev score`, or its URL (s3://bucket/saev/tables: read in place through DuckDB's httpfs, else mirrored locally first)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every row to a .csv or .parquet file (atomically) instead of printing."),
    param: list[str] = typer.Option([], "--param", "-p", help="Bind $name to a value, e.g. --param dataset=rlaif-v (repeatable). Values are text; DuckDB casts them where the type is clear (LIMIT $k, col = $x), else write $k::INTEGER."),
    limit: int = typer.Option(50, "--limit", min=0, help="Rows printed (0: all); the count of the others is reported."),
    format: str = typer.Option("table", "--format", help="Printed format: table, csv or json."),
    print_views: bool = typer.Option(False, "--print-views", help="Print the views as SQL for plain DuckDB (duckdb -c '.read views.sql') and exit."),
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

      saev query --print-views > views.sql && duckdb -c ".read views.sql" -c "FROM scores LIMIT 5"
    """
    from saev_core.tables.query import count_note, format_rows, views_sql

    if format not in ("table", "csv", "json"):
        raise typer.BadParameter(f"expected table, csv or json, got {format!r}", param_hint="--format")
    if print_views:
        try:
            typer.echo(views_sql(tables), nl=False)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        return
    if sql is None:
        raise typer.BadParameter("give the SQL to run (or --print-views)", param_hint="SQL")
    result = _run_sql(tables, sql, param, out, limit)
    if result is not None:
        shown, n = result
        typer.echo(format_rows(shown, format))
        if format == "table" or n > shown.num_rows:
            typer.echo(count_note(n, shown.num_rows), err=format != "table")


def _run_sql(tables: str, sql: str, param: list[str], out: Path | None, limit: int):
    """Run the query with the ``--param`` values; write it to ``out`` (None back), or return its
    first ``limit`` rows and the row count. A bad value, a refusal or a DuckDB error ends the
    command with its one-line message."""
    import duckdb
    import pyarrow as pa

    from saev_core.tables.query import QueryRefused, read_head, run_query, write_result

    con = None
    try:
        params = parse_pairs(param, "--param")
        con = _tables_connection(tables)
        reader = run_query(con, sql, params)
        if out is not None:
            typer.echo(f"wrote {write_result(reader, out)} rows to {out}")
            return None
        return read_head(reader, limit)
    except (QueryRefused, FileNotFoundError, ValueError) as e:
        fail(str(e))
    except (duckdb.Error, pa.ArrowException, OSError) as e:
        fail(str(e).strip().splitlines()[0])
    finally:
        if con is not None:
            con.close()


def _tables_connection(tables: str):
    """The sandboxed views over ``tables``: in place (a local root, or s3:// through httpfs), else
    over a local mirror of the URL, with a note on stderr saying why."""
    from saev_core.store.remote import Mirror
    from saev_core.tables.duckdb_s3 import HttpfsUnavailable
    from saev_core.tables.query import connect

    try:
        return connect(tables)
    except HttpfsUnavailable as e:
        typer.echo(f"note: {e}; mirroring {tables} locally", err=True)
        mirror = Mirror(tables)  # only new or changed files are downloaded
        mirror.pull("")
        return connect(mirror.local)


@command(app, "align")
@config_options(AlignConfig, help=FILLED_IN["align"])
def align(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    flags: dict = None,
):
    """Align the base model on a filtered subset with TRL (multi-GPU: `accelerate launch -m saev_core align ...`).

    Example: saev align --data data/filtered/saev-50 --method dpo --out data/aligned/saev-50-dpo
    """
    from saev_core.alignment.align import run_alignment
    from saev_core.sae.distributed import is_main_process

    cfg = validate(AlignConfig, align_inputs(read_config(config, set_, flags)))
    m = run_alignment(cfg)
    if not is_main_process():  # under accelerate launch, process 0 reports
        return
    _echo_json({k: m[k] for k in ("method", "n_train_rows", "steps", "first_loss", "last_loss", "seconds")} | {"model": str(Path(cfg.out) / "model")})


@command(app, "evaluate")
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
    from saev_core.activations.data import DatasetSpec
    from saev_core.alignment.model_eval import evaluate_model

    _echo_json(evaluate_model(model, DatasetSpec(path=heldout), n_samples, reference=reference, beta=beta, device=device,
                              chat_template=chat_template))


@command(app, "experiment")
@config_options(ExperimentConfig, names={"scorers": "scorer", "fractions": "fraction", "random_seeds": "random_seed",
                                         "train_seeds": "train_seed"})
def experiment(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help="Override any ExperimentConfig field, e.g. --set align.lr=1e-4."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the runs in --out made from another model, scores or training config."),
    flags: dict = None,
):
    """Performance vs data kept: filter -> align -> evaluate for every scorer and fraction, with seeds.

    Writes results.jsonl, table.md and plot.png; a rerun with the same model, scores and training
    config resumes, skipping finished runs (the grid may grow).
    """
    from saev_core.alignment.experiment import run_experiment

    cfg = validate(ExperimentConfig, read_config(config, set_, flags))
    summary = run_experiment(experiment_inputs(cfg), overwrite=overwrite)
    typer.echo(summary["markdown"])
    typer.echo(f"\nplot: {summary['plot']}\nresults: {summary['results']}")


artifacts_app = typer.Typer(help="The artifact store: what the pipeline has built (list, gc, migrate).", invoke_without_command=True)
app.add_typer(artifacts_app, name="artifacts")


@artifacts_app.callback()
def artifacts_list(
    ctx: typer.Context,
    root: str = typer.Option(DEFAULT_STORE, help="Artifact store root."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """List finished artifacts: stage, key, created, config summary, metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from saev_core.store.artifacts import ArtifactStore

    store = ArtifactStore.at(root)
    try:
        typer.echo(json.dumps(store.list(), indent=2, default=str) if as_json else store.listing())
    except ERRORS as e:  # a callback, not a `command`: the same one-line errors by hand
        fail(str(e))


@command(artifacts_app, "gc")
def artifacts_gc(
    root: str = typer.Option(DEFAULT_STORE, help="Artifact store root."),
    keep: list[str] = typer.Option([], "--keep", help="Key to keep with everything upstream (repeatable; default: every final artifact)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed."),
):
    """Remove unfinished stage directories and artifacts no kept artifact depends on."""
    from saev_core.store.artifacts import ArtifactStore

    removed = ArtifactStore.at(root).gc(keep or None, dry_run=dry_run)
    typer.echo("\n".join(removed) if removed else "nothing to remove")


@command(artifacts_app, "migrate")
def artifacts_migrate(
    root: str = typer.Option(DEFAULT_STORE, help="Artifact store root (local)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the new keys."),
):
    """Re-key a store written by saev before 0.3 (keys that hashed paths) so this saev reuses it."""
    from saev_core.store.artifacts import migrate

    moves = migrate(root, dry_run=dry_run)
    typer.echo("\n".join(f"{stage:<10} {old} -> {new}" for old, (stage, new) in moves.items()) or f"{root} needs no migration")


@command(app, "report")
def report(
    out: str = typer.Option("data/report", "--out", "-o", help="Directory of the HTML report (open index.html)."),
    dataset: str = typer.Option("demo-rlaif", help="Scored dataset to browse."),
    sae_id: Optional[str] = typer.Option(None, help="SAE whose tables to browse (default: the only one)."),
    tables: str = typer.Option(DEFAULT_TABLES, help="Feature tables root."),
    latents: int = typer.Option(100, help="Latent pages to render (the top ones by cross-modal weight)."),
    top_samples: int = typer.Option(8, help="Top-activating samples per latent page."),
    samples: int = typer.Option(40, help="Sample pages for the top samples by --scorer (plus those shown on latent pages)."),
    scorer: str = typer.Option(DEFAULT_SCORER, help="Scorer that ranks the sample list (the default scorer of filter and the pipeline)."),
    labels: Optional[str] = typer.Option(None, help="Evaluation labels to split score distributions into clean vs low-quality."),
    experiment: Optional[str] = typer.Option(None, help="A `saev experiment` directory whose plot to include."),
):
    """Write a static, self-contained HTML feature browser (works from file://, no network)."""
    from saev_core.tables.query import open_views, the_sae
    from saev_core.scoring.report import write_report

    sae_id = the_sae(open_views(tables), tables, sae_id, table="feature_stats", dataset=dataset)
    store = store_of_tables(tables)
    _echo_json(write_report(tables, out, dataset, sae_id, latents, top_samples, samples, labels,
                            sae_points(store) if store else None, experiment, scorer))

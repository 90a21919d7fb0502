"""The paper's experiment: performance vs fraction of data kept, one line per scorer.

For each scorer and kept fraction: filter -> align (SFT or DPO from the base model) -> evaluate on
the held-out split, with several seeds for the random scorer and for training. With evaluation
labels, an ``oracle`` line (keep clean rows only, ``quality.oracle_ranking``) measures the headroom:
at its natural fraction (every clean row) and at each smaller kept fraction. Every run lands
in ``<out>/runs/<name>/`` with its manifests and ``eval.json``; a rerun skips finished runs, so an
interrupted grid resumes. Outputs: ``results.jsonl`` (one row per run), ``table.md`` (mean and
spread per scorer and fraction, absolute and relative to full data) and ``plot.png``.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from tqdm.auto import tqdm

from saev_core.alignment.align import AlignConfig, run_alignment
from saev_core.configs import ExperimentConfig
from saev_core.activations.data import DatasetSpec
from saev_core.alignment.filter import FilterConfig, run_filter
from saev_core.io import atomic_path, read_json, write_json
from saev_core.alignment.model_eval import evaluate_model
from saev_core.scoring.quality import oracle_ranking
from saev_core.tables.schema import partitions

METRIC = {"sft": "answer_accuracy", "dpo": "preference_accuracy"}


def run_name(r: dict) -> str:
    seed = f"-s{r['seed']}" if r["seed"] is not None else ""
    return f"{r['scorer']}{seed}-f{round(r['fraction'] * 100):03d}-t{r['train_seed']}"


def full_data_steps(acfg: AlignConfig, n_rows: int) -> int:
    """Optimizer steps ``acfg`` takes on ``n_rows`` rows (its max_steps, else epochs over the rows)."""
    if acfg.max_steps > 0:
        return acfg.max_steps
    return max(1, math.ceil(math.ceil(n_rows / acfg.batch_size) / acfg.grad_accum * acfg.epochs))


def run_one(cfg: ExperimentConfig, r: dict) -> dict:
    """One grid point: filter -> align -> evaluate, skipped if its eval.json exists."""
    heldout = DatasetSpec(path=cfg.heldout)
    run = Path(cfg.out) / "runs" / run_name(r)
    done = run / "eval.json"
    if done.exists():
        return read_json(done)
    oracle = r["scorer"] == "oracle"
    scorer = "random" if r["scorer"] in ("full", "oracle") else r["scorer"]
    fcfg = FilterConfig(tables=cfg.tables, out=str(run / "data"), scorer=scorer, top_fraction=r["fraction"],
                        datasets=[cfg.dataset] if cfg.dataset else None, sae_id=cfg.sae_id,
                        random_seed=None if oracle else r["seed"])
    filtered = run_filter(fcfg, ranking=oracle_ranking(cfg.labels, r["seed"] or 0) if oracle else None,
                          ranking_name="oracle" if oracle else None)
    acfg = AlignConfig(model=cfg.model, data=str(run / "data"), out=str(run / "model"), method=cfg.method,
                       seed=r["train_seed"], **cfg.align)
    if cfg.match_steps:
        n_full = sum(s["n_scored"] for s in filtered["sources"].values())
        acfg = acfg.model_copy(update={"max_steps": full_data_steps(acfg, n_full)})
    aligned = run_alignment(acfg)
    report = evaluate_model(str(run / "model" / "model"), heldout, cfg.eval_samples,
                            reference=cfg.model if cfg.method == "dpo" else None, beta=acfg.beta)
    row = {**r, "n_train": filtered["n_kept"], "steps": aligned["steps"], "train_loss": aligned["train_loss"], "seconds": aligned["seconds"],
           **{k: v for k, v in report.items() if k != "examples"}}
    write_json(done, row)
    return row


def summarise(rows: list[dict], metric: str, base: float | None) -> tuple[list[dict], str]:
    """Mean and spread (population std over seeds) per (scorer, fraction), relative to full data."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["scorer"], r["fraction"]), []).append(r[metric])
    full = statistics.mean(groups[("full", 1.0)]) if ("full", 1.0) in groups else None
    table = []
    for (scorer, frac), vals in sorted(groups.items(), key=lambda kv: (kv[0][0] != "full", kv[0][0], kv[0][1])):
        mean = statistics.mean(vals)
        table.append({"scorer": scorer, "fraction": frac, "n_runs": len(vals), "mean": mean,
                      "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                      "relative_to_full": mean / full if full else None})
    lines = [f"| scorer | kept | runs | {metric} (mean ± std) | relative to full |", "| --- | ---: | ---: | ---: | ---: |"]
    if base is not None:
        lines.append(f"| base model | - | 1 | {base:.3f} | {base / full:.3f} |" if full else f"| base model | - | 1 | {base:.3f} | - |")
    for t in table:
        rel = f"{t['relative_to_full']:.3f}" if t["relative_to_full"] is not None else "-"
        lines.append(f"| {t['scorer']} | {t['fraction']:.0%} | {t['n_runs']} | {t['mean']:.3f} ± {t['std']:.3f} | {rel} |")
    return table, "\n".join(lines)


def plot(table: list[dict], metric: str, base: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    full = next((t for t in table if t["scorer"] == "full"), None)
    for scorer in dict.fromkeys(t["scorer"] for t in table if t["scorer"] != "full"):
        pts = sorted((t for t in table if t["scorer"] == scorer), key=lambda t: t["fraction"])
        if full:
            pts.append(full)
        xs, ys, es = [p["fraction"] * 100 for p in pts], [p["mean"] for p in pts], [p["std"] for p in pts]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=scorer)
    if full:
        ax.axhline(full["mean"], color="grey", ls="--", lw=1, label="full data")
    if base is not None:
        ax.axhline(base, color="black", ls=":", lw=1, label="base model")
    ax.set_xlabel("data kept (%)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("held-out performance vs data kept")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def evaluate_base(cfg: ExperimentConfig) -> dict:
    """The base model's metrics on the same held-out rows (cached in base_eval.json)."""
    base_file = Path(cfg.out) / "base_eval.json"
    if not base_file.exists():
        report = evaluate_model(cfg.model, DatasetSpec(path=cfg.heldout), cfg.eval_samples)
        write_json(base_file, {k: v for k, v in report.items() if k != "examples"})
    return read_json(base_file)


def finish(cfg: ExperimentConfig, rows: list[dict], base: dict) -> dict:
    """Write results.jsonl, table.md, plot.png and summary.json from the finished runs."""
    out = Path(cfg.out)
    metric = METRIC[cfg.method]
    base = base[metric]
    with atomic_path(out / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, md = summarise(rows, metric, base)
    (out / "table.md").write_text(md + "\n")
    plot(table, metric, base, out / "plot.png")
    summary = {"config": cfg.model_dump(), "metric": metric, "base": base, "table": table, "n_runs": len(rows),
               "results": str(out / "results.jsonl"), "plot": str(out / "plot.png"), "markdown": md}
    write_json(out / "summary.json", summary)
    return summary


IDENTITY = "experiment.json"


def claim_out(cfg: ExperimentConfig, overwrite: bool = False) -> None:
    """Make ``cfg.out`` this experiment's: finished runs are reused only when they were made from the
    same base model, held-out split, scores and training settings (the grid itself may grow).
    Another experiment's directory is refused, or emptied with ``overwrite``."""
    if cfg.model is None or cfg.heldout is None:
        raise ValueError("the experiment needs model and heldout (`saev experiment` takes them from the demo world `make run` built)")
    scores = sorted((str(f.relative_to(cfg.tables)), read_json(f).get("identity"))
                    for _, _, f in partitions(cfg.tables, cfg.dataset, cfg.sae_id))
    identity = {**cfg.model_dump(include={"tables", "model", "heldout", "labels", "dataset", "sae_id", "method", "align", "eval_samples",
                                          "match_steps"}),
                "scores": scores}
    identity = json.loads(json.dumps(identity, default=str))
    out, f = Path(cfg.out), Path(cfg.out) / IDENTITY
    ours = [out / name for name in ("runs", "base_eval.json", "results.jsonl", "table.md", "plot.png", "summary.json", IDENTITY)]
    stale = (f.exists() and read_json(f) != identity) or (not f.exists() and any(p.exists() for p in ours))
    if stale and not overwrite:
        raise ValueError(f"{out} holds experiment runs made from another model, held-out split, scores or training config "
                         "(or from before saev recorded them); pass --overwrite to replace them, or choose another --out")
    if stale:  # only what an experiment writes: --out may be a directory holding other things
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(f, identity)


def run_experiment(cfg: ExperimentConfig, overwrite: bool = False) -> dict:
    """Run (or resume) the whole grid in this process."""
    claim_out(cfg, overwrite)
    base = evaluate_base(cfg)
    rows = [run_one(cfg, r) for r in tqdm(cfg.runs(), desc="experiment", unit="run", disable=not cfg.progress)]
    return finish(cfg, rows, base)

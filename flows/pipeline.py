"""The ``saev`` flow (deployment ``saev/full-pipeline``): prepare (demo data + model) -> dump
activations -> train SAE -> evaluate it -> score into the feature tables -> keep the top fraction
as a TRL dataset -> align the base model on it -> evaluate base and aligned model.

Every stage writes into the content-addressed artifact store (``saev_core.store.artifacts``) and Prefect
caches each task on the same key, so a rerun with the same config is all Cached, a run that
crashed resumes at the stage it was in, and a changed config reruns only what is downstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.stages import AlignOverrides, DumpOverrides, ScoreOverrides, TrainOverrides, check_deployment_paths, dump_config
from saev_core.alignment.align import AlignConfig
from saev_core.configs import DEFAULT_SCORER, DEFAULT_STORE
from saev_core.activations.data import DatasetSpec
from saev_core.demo.build import DemoConfig
from saev_core.demo.defaults import DEMO_ALIGN, DEMO_DUMP, DEMO_SAE
from saev_core.activations.dump import DumpConfig, plan_shards
from saev_core.activations.inputs import chat_template_digest
from saev_core.cli.overrides import set_fields
from saev_core.scoring.run import ScoreConfig
from saev_core.store.artifacts import ArtifactStore, stage_key
from saev_core.sae.train import TrainConfig, dead_note, headline
from tasks.align import align_task, evaluate_model_task
from tasks.common import run_cached
from tasks.demo import prepare_demo, prepare_demo_clip
from tasks.dump import dump_activations, dump_shard_task
from tasks.score import (filter_dataset_task, partition_is_current, partition_taken, report_task, score_dataset_task,
                         score_shard_task, scorer_quality_task)
from tasks.train import eval_sae_task, train_sae_task, train_saes_task


class PipelineConfig(BaseModel):
    """Everything the pipeline needs; the defaults run it on the demo world."""

    model_config = ConfigDict(extra="forbid")

    artifacts: str = Field(DEFAULT_STORE, description="artifact store root (stages, and the feature tables in tables/)")
    demo: DemoConfig = Field(default_factory=DemoConfig, description="demo world, built when model/dataset are not given")
    model: str | None = Field(None, description="hub id or path; default: the demo world's model")
    dataset: DatasetSpec | None = Field(None, description="default: the demo world's demo-rlaif")
    dataset_name: str = "demo-rlaif"
    chat_template: str | None = Field(None, description="Jinja chat template file for a processor that ships none (PaliGemma), for every stage")
    layer: int = Field(0, description="decoder block to hook; 0 for the demo model, whose modalities share features early (bench/RESULTS.md)")
    limit: int | None = Field(None, ge=1, description="cap on the rows used (quick runs)")
    dump: DumpOverrides = Field(default_factory=DumpOverrides, description="DumpConfig overrides")
    shard_tasks: bool = Field(False, description="one task per shard for dump and scoring, for a Dask/Ray task runner over machines")
    sae: TrainOverrides = Field(default_factory=TrainOverrides, description="TrainConfig overrides (on top of the demo SAE)")
    frontier: list[TrainOverrides] = Field(default_factory=lambda: [TrainOverrides(k=4), TrainOverrides(k=32)],
                                 description="extra SAEs (overrides on top of `sae`) trained on the same dump for the report's FVU-vs-L0 frontier")
    frontier_tokens: float = Field(0.25, gt=0, le=1, description="share of the SAE's training tokens each frontier SAE gets "
                                                                 "(unless it sets total_tokens); 0.25 keeps `make run` within 8 min")
    eval_samples: int = Field(100, ge=0, description="held-out samples for the SAE's cross-entropy and KL figures")
    model_eval_samples: int | None = Field(None, ge=1, description="held-out rows each model is evaluated on (None: the whole split, "
                                                                  "500 on the demo, where an accuracy's binomial noise is about 0.02)")
    score: ScoreOverrides = Field(default_factory=ScoreOverrides, description="ScoreConfig overrides")
    clip_baseline: bool | None = Field(None, description="also train a tiny CLIP on the demo's own image-text pairs and score clip_score "
                                                          "beside saev, the filter users would pick instead (default: on the demo world "
                                                          "only; for your own data set score.clip_model)")
    scorer: str = Field(DEFAULT_SCORER, description="scorer that picks the kept subset (chosen on the validation world, bench/RESULTS.md)")
    top_fraction: float = Field(0.5, gt=0, le=1)
    align: AlignOverrides = Field(default_factory=lambda: AlignOverrides(**DEMO_ALIGN), description="AlignConfig overrides")
    compare: bool = Field(True, description="with labels: also align on a random and an oracle (clean rows) subset of the same size")
    report_latents: int = Field(50, ge=0, description="latent pages in the HTML report (0: no report)")
    labels: str | None = Field(None, description="evaluation-only labels for the scorer AUROC; default: the demo world's")
    heldout: str | None = Field(None, description="held-out split for model evaluation; default: the demo world's")

    @model_validator(mode="after")
    def _stages_hold_together(self) -> "PipelineConfig":
        """Each stage's whole config with placeholder paths, so a bad combination of fields (relu
        with k, a scorer that does not exist) fails when the flow starts, not after the dump."""
        sae = {**DEMO_SAE, **set_fields(self.sae), "activations": "-", "out": "-"}
        for extra in [{}, *map(set_fields, self.frontier)]:
            TrainConfig.model_validate({**sae, **extra})
        ScoreConfig.model_validate({**set_fields(self.score), "activations": "-", "sae": "-"})
        AlignConfig.model_validate({**set_fields(self.align), "model": "-", "data": "-", "out": "-"})
        if self.clip_baseline and self.model is not None and self.dataset is not None:
            raise ValueError("clip_baseline trains a CLIP on the demo world's pairs; with your own model and dataset "
                             "set score.clip_model to a CLIP/SigLIP hub id or path instead")
        return self


def dump_stage(store: ArtifactStore, config: dict, upstream: list[str], shard_tasks: bool = False) -> dict:
    """The dump, optionally as one mapped task per shard first (each resumable, each a Prefect task
    a distributed task runner can place anywhere), then the finishing task that writes the manifest."""
    if shard_tasks and not store.current("dump", stage_key("dump", config, upstream)):
        n = plan_shards(DumpConfig.model_validate({**config, "out": "-"}))
        dump_shard_task.map(store.location, unmapped(config), unmapped(upstream), list(range(n))).wait()
    return run_cached(dump_activations, store, "dump", config, upstream)


def score_stage(store: ArtifactStore, config: dict, upstream: list[str], n_shards: int, shard_tasks: bool = False) -> dict:
    """Scoring, optionally as one mapped task per dump shard first, then the finishing task
    (reference pools -> weights -> scores). A partition scored under another config is replaced
    by the single finishing task, so shard tasks only run on a fresh or matching partition."""
    valid = partition_is_current(store.location)
    if shard_tasks and not store.current("score", stage_key("score", config, upstream), valid) and \
            not partition_taken(store.location, config):
        score_shard_task.map(store.location, unmapped(config), list(range(n_shards))).wait()
    return run_cached(score_dataset_task, store, "score", config, upstream, valid=valid)


@dataclass
class _Inputs:
    """What the stages start from: the model, the dataset, and for the demo world its labels,
    held-out split and artifact (``world``), which the stages below depend on."""

    model: str
    spec: DatasetSpec
    template: dict
    upstream: list[str]
    world: dict | None = None
    labels: str | None = None
    heldout: str | None = None


def prepare_inputs(store: ArtifactStore, cfg: PipelineConfig) -> _Inputs:
    """The given model and dataset, or the demo world's (built once, as the `prepare` artifact)."""
    world, upstream, labels, heldout, world_dir = None, [], None, None, None
    if cfg.model is None or cfg.dataset is None:
        world = run_cached(prepare_demo, store, "prepare", cfg.demo.model_dump(), [])
        world_dir, upstream = Path(world["path"]), [world["key"]]
        labels, heldout = str(world_dir / "labels.parquet"), str(world_dir / world["manifest"]["heldout"])
    spec = cfg.dataset or DatasetSpec(path=str(world_dir / "datasets" / cfg.dataset_name / "train.parquet"))
    if cfg.limit is not None:
        spec = spec.model_copy(update={"limit": cfg.limit})
    # The template counts by its content: a changed file changes the dump's key and all below it.
    template = {"chat_template": cfg.chat_template, "chat_template_sha256": chat_template_digest(cfg.chat_template)} \
        if cfg.chat_template else {}
    return _Inputs(cfg.model or str(world_dir / "model"), spec, template, upstream, world, cfg.labels or labels, cfg.heldout or heldout)


def sae_stages(store: ArtifactStore, cfg: PipelineConfig, src: _Inputs) -> tuple[dict, dict, list[dict], dict]:
    """Dump, the SAE, the report's frontier SAEs (trained together, from one pass over the dump), and the SAE's evaluation."""
    dump_conf = dump_config(src.model, src.spec, cfg.layer, {**(DEMO_DUMP if src.world else {}), **src.template, **set_fields(cfg.dump)})
    dump = dump_stage(store, dump_conf, src.upstream, cfg.shard_tasks)
    sae_conf = {**DEMO_SAE, **set_fields(cfg.sae), "activations": dump["path"]}
    sae = run_cached(train_sae_task, store, "train", sae_conf, [dump["key"]])
    main = TrainConfig.model_validate({**sae_conf, "out": "-"})
    budget = {"total_tokens": max(int(main.total_tokens * cfg.frontier_tokens), main.batch_size)}
    frontier = run_cached(train_saes_task, store, "frontier", [{**sae_conf, **budget, **set_fields(extra)} for extra in cfg.frontier],
                          [dump["key"]]) if cfg.report_latents and cfg.frontier else []
    sae_eval = run_cached(eval_sae_task, store, "eval-sae", {"run": sae["path"], "n_samples": cfg.eval_samples}, [sae["key"]])
    return dump, sae, frontier, sae_eval


def scoring_stages(store: ArtifactStore, cfg: PipelineConfig, src: _Inputs, dump: dict, sae: dict, frontier: list[dict]) -> tuple[dict, dict, dict | None]:
    """Scoring (with the demo's CLIP score beside the SAE's scorers) and the feature browser."""
    score_conf = {"activations": dump["path"], "sae": sae["path"], "dataset_name": cfg.dataset_name, **set_fields(cfg.score)}
    score_upstream = [dump["key"], sae["key"]]
    if cfg.clip_baseline is not False and src.world is not None and "clip_model" not in score_conf:
        clip = run_cached(prepare_demo_clip, store, "clip", {"world": str(Path(src.world["path"]))}, [src.world["key"]])
        score_conf["clip_model"], score_upstream = clip["manifest"]["model"], [*score_upstream, clip["key"]]
    scored = score_stage(store, score_conf, score_upstream, len(dump["manifest"]["shards"]), cfg.shard_tasks)
    report_conf = {"dataset": cfg.dataset_name, "sae_id": scored["manifest"]["sae_id"], "n_latents": cfg.report_latents,
                   "scorer": cfg.scorer, "labels": src.labels, "frontier_of": dump["path"]}
    report = run_cached(report_task, store, "report", report_conf, [scored["key"], *(f["key"] for f in frontier)]) \
        if cfg.report_latents else None
    return scored, score_conf, report


def alignment_stages(store: ArtifactStore, cfg: PipelineConfig, src: _Inputs, scored: dict, with_clip: bool) -> tuple[dict, dict, dict]:
    """The scorer's kept subset and the model aligned on it, and beside them the same-size
    baselines: random, the evaluation-only oracle, and clip_score (the filter users would pick
    instead) where it was scored."""
    filter_conf = {"scorer": cfg.scorer, "datasets": [cfg.dataset_name], "sae_id": scored["manifest"]["sae_id"], "top_fraction": cfg.top_fraction}

    def filter_and_align(conf: dict) -> tuple[dict, dict]:
        kept = run_cached(filter_dataset_task, store, "filter", conf, [scored["key"]])
        align_conf = {"model": src.model, "data": str(Path(kept["path"]) / "data"),
                      **({"chat_template": cfg.chat_template} if cfg.chat_template else {}), **set_fields(cfg.align)}
        return kept, run_cached(align_task, store, "align", align_conf, [kept["key"]])

    filtered, aligned = filter_and_align(filter_conf)
    baselines = {"random": filter_and_align({**filter_conf, "scorer": "random"}),
                 "oracle": filter_and_align({**filter_conf, "scorer": "random", "oracle_labels": src.labels})} \
        if cfg.compare and src.labels is not None and cfg.scorer != "random" else {}
    if baselines and with_clip and cfg.scorer != "clip_score":
        baselines["clip_score"] = filter_and_align({**filter_conf, "scorer": "clip_score"})
    return filtered, aligned, baselines


def evaluation(store: ArtifactStore, cfg: PipelineConfig, src: _Inputs, aligned: dict, baselines: dict) -> dict:
    """The base model, the aligned one and each baseline's, on the held-out split."""
    method = aligned["manifest"]["method"]
    keys = ("n", "answer_accuracy", "nll", "preference_accuracy")

    def evaluate(model: str, upstream: list[str], extra: dict) -> dict:
        conf = {"model": model, "heldout": src.heldout, "n_samples": cfg.model_eval_samples, **extra, **src.template}
        rec = run_cached(evaluate_model_task, store, "evaluate", conf, upstream)
        return {k: rec["manifest"].get(k) for k in keys}

    def trained(run: dict) -> dict:
        return evaluate(str(Path(run["path"]) / "aligned" / "model"), [run["key"]], {"reference": src.model if method == "dpo" else None})

    base = evaluate(src.model, src.upstream, {})
    return {"method": method, "scorer": cfg.scorer, "train_rows": aligned["manifest"]["n_train_rows"],
            "base": base, "aligned": trained(aligned), "baselines": {name: trained(a) for name, (_, a) in baselines.items()}}


@flow(name="saev")
def saev_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:  # noqa: B008 (Prefect parameter default)
    cfg = config
    check_deployment_paths(artifacts=cfg.artifacts)
    store = ArtifactStore.at(cfg.artifacts)
    src = prepare_inputs(store, cfg)
    dump, sae, frontier, sae_eval = sae_stages(store, cfg, src)
    scored, score_conf, report = scoring_stages(store, cfg, src, dump, sae, frontier)
    filtered, aligned, baselines = alignment_stages(store, cfg, src, scored, "clip_model" in score_conf)
    sae_figures, ce = headline(sae["manifest"]), sae_eval["manifest"].get("ce_with_images", {})
    summary = {
        "artifacts": store.location,
        "dump": dump["path"], "samples": dump["manifest"]["n_samples"], "rejected": dump["manifest"]["n_rejected"],
        "sae": str(Path(sae["path"]) / "sae"), "sae_fvu": {g: sae_figures[f"{g}_fvu"] for g in ("all", "image", "text")},
        "sae_l0": sae_figures["all_l0"], "sae_dead": sae["manifest"].get("metrics"),
        "ce_loss_recovered": ce.get("ce_loss_recovered"), "kl_score": {g: r["kl_score"] for g, r in ce.get("kl", {}).items()},
        "tables": str(store.tables), "sae_id": scored["manifest"]["sae_id"], "cross_modal_latents": scored["manifest"]["n_cross_modal"],
        "filtered": str(Path(filtered["path"]) / "data"), "filtered_kept": filtered["manifest"]["n_kept"],
        "aligned_model": str(Path(aligned["path"]) / "aligned" / "model"),
        "report": report["manifest"]["index"] if report else None,
        "query": f"saev query --tables {store.tables} \"SELECT scorer, avg(score) FROM scores GROUP BY ALL\"",
    }
    if src.world is not None:
        summary["demo_world"] = str(Path(src.world["path"]))
        summary["demo_caption_accuracy"] = src.world["manifest"]["pretrain"]["caption_accuracy"]
    if src.heldout is not None:
        summary["alignment"] = evaluation(store, cfg, src, aligned, baselines)
    if src.labels is not None:
        quality = scorer_quality_task(store.location, src.labels, cfg.dataset_name, scored["manifest"]["sae_id"])
        summary["scorer_auroc"] = {r["scorer"]: round(r["auroc"], 3) for r in quality}
    get_run_logger().info("saev pipeline finished: %s", summary)
    return summary


BASELINE_NAMES = {"random": "random", "oracle": "oracle (clean rows only)"}


def _se(p: float, n: int) -> float:
    """Binomial standard error sqrt(p (1 - p) / n) of an accuracy p measured on n rows."""
    return math.sqrt(p * (1 - p) / n) if n else math.nan


def _with_se(p: float, n: int) -> str:
    return f"{p:.3f} ± {_se(p, n):.3f}"


def render_summary(s: dict) -> str:
    """The end-of-run report `make run` prints."""
    lines = ["", "saev pipeline finished", "",
             f"  dump        {s['samples']} samples ({s['rejected']} rejected) -> {s['dump']}",
             f"  SAE         FVU {s['sae_fvu']['all']:.4f} (image {s['sae_fvu']['image']:.4f}, text {s['sae_fvu']['text']:.4f}), "
             f"L0 {s['sae_l0']:.1f}, CE-loss-recovered {s['ce_loss_recovered'] if s['ce_loss_recovered'] is None else round(s['ce_loss_recovered'], 3)}, "
             f"KL score {', '.join(f'{g} {v:.3f}' for g, v in s.get('kl_score', {}).items()) or '-'}"
             f" -> {s['sae']}",
             *([f"              {dead_note(s['sae_dead'])}"] if s.get("sae_dead") else []),
             f"  scores      SAE {s['sae_id']}, {s['cross_modal_latents']} cross-modal latents -> {s['tables']}",
             f"  filter      kept {s['filtered_kept']} -> {s['filtered']}"]
    if "alignment" in s:
        a = s["alignment"]
        lines.append(f"  alignment   {a['method']} on {a['train_rows']} rows: answer accuracy {a['base']['answer_accuracy']:.3f} -> "
                     f"{a['aligned']['answer_accuracy']:.3f}, preference accuracy {a['base']['preference_accuracy']:.3f} -> "
                     f"{a['aligned']['preference_accuracy']:.3f} -> {s['aligned_model']}")
        if a.get("baselines"):
            rows = {"none (base model)": a["base"], f"{a['scorer']} (top)": a["aligned"],
                    **{BASELINE_NAMES.get(name, f"{name} (top)"): b for name, b in a["baselines"].items()}}
            n = a["aligned"]["n"]
            lines += ["", f"  the same {a['train_rows']} rows' worth of data, chosen {len(rows) - 1} ways; accuracy on {n} held-out rows "
                      "± its binomial standard error (one training seed):", "",
                      "  | subset | answer accuracy | preference accuracy |", "  | --- | ---: | ---: |"]
            lines += [f"  | {name} | {_with_se(r['answer_accuracy'], r['n'])} | {_with_se(r['preference_accuracy'], r['n'])} |"
                      for name, r in rows.items()]
            lines += ["", "  Two rows differ beyond this noise where the gap exceeds twice sqrt(se1^2 + se2^2), about "
                      f"{2 * math.sqrt(2) * _se(0.5, n):.3f} here; training seeds add their own spread (bench/RESULTS.md).",
                      "  The oracle row needs the evaluation-only labels; every other row reads none."]
    if "scorer_auroc" in s:
        lines += ["", "  scorer AUROC, clean vs low-quality (evaluation labels only):", "", "  | scorer | AUROC |", "  | --- | ---: |"]
        lines += [f"  | {k} | {v:.3f} |" for k, v in s["scorer_auroc"].items()]
    if s.get("report"):
        lines += ["", f"  feature browser:           {s['report']}"]
    lines += ["", f"  query the feature tables:  {s['query']}", f"  list the artifacts:        saev artifacts --root {s['artifacts']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_summary(saev_pipeline()))

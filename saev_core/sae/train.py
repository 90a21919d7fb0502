"""SAE training on a dump's activation shards: streamed, shuffled, checkpointed, resumable.

Output directory::

    config.json                     the training config (another config into this dir is refused)
    checkpoints/step-00001000/      full training state: SAE (with buffers), optimizer state, stream position
    train_log.jsonl                 loss, MSE, FVU, L0, dead fraction, lr, lambda every ``log_every`` steps,
                                    and per modality ("image": {mse, fvu, l0}) on ``probe_rows`` held-out tokens
    sae/                            the final SAE in SAELens format (cfg.json, sae_weights, sparsity)
    manifest.json                   config, tokens, throughput, held-out metrics

A run stopped at any point (crash, kill, Ctrl-C) resumes from its last checkpoint and ends with
the same weights as an uninterrupted run: batches come from a resumable seeded stream and every
piece of state is in the checkpoint.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from saev_core import __version__
from saev_core.activations.shards import MODALITY_SETS, ActivationDump, ShuffledBatches
from saev_core.sae.architectures import field_names, own_fields
from saev_core.sae.checkpoint import save_sae, trained_sae_config
from saev_core.configs import TrainConfig
from saev_core.activations.cpu import parallel_decode_pool, reuse_freed_memory
from saev_core.sae.tracking import Tracker
from saev_core.sae.distributed import World, all_gather, any_true, barrier, broadcast, launched_world, sync_latent_stats
from saev_core.io import atomic_dir, atomic_path, claim_output_dir, read_json, write_json
from saev_core.activations.modeling import resolve_device
from saev_core.sae.optim import default_lr, make_optimizer
from saev_core.sae.model import SAE, SAEConfig, SAEOutput, estimate_input_scale, sparsity_coefficient_at
from saev_core.sae.evaluate import heldout_probe, probe_metrics, reconstruction_metrics


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the last good checkpoint."""


def lr_at(step: int, total_steps: int, lr: float, decay_frac: float, warmup_frac: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup_frac`` of steps, constant lr, then linear decay to 0
    over the last ``decay_frac`` (METHOD.md sec. 2's schedule, plus sparsify's and OpenAI's warm-up)."""
    warmup_steps, decay_steps = warmup_frac * total_steps, decay_frac * total_steps
    scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_steps > 0:
        scale = min(scale, (total_steps - step) / decay_steps)
    return lr * scale


def check_memory(d_in: int, d_sae: int, device: torch.device, batch_size: int) -> None:
    """Fail before training when weights + Adam + grads + activations cannot fit."""
    params = 2 * d_in * d_sae + d_sae + d_in
    need = 4 * (4 * params + 3 * batch_size * d_sae)  # fp32: weights, grads, 2 Adam moments; pre/f/grad per token
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available
    if need > 0.9 * free:
        raise MemoryError(
            f"an SAE with d_in={d_in}, d_sae={d_sae} at batch_size={batch_size} needs about {need / 2**30:.1f} GiB "
            f"but only {free / 2**30:.1f} GiB is free on {device}; lower expansion_factor/d_sae or batch_size"
        )


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step-*"))


def save_training_state(path: Path, sae: SAE, opt: torch.optim.Optimizer, streams: list[dict], step: int) -> None:
    """Everything needed to continue bit-for-bit, without pickle: tensors in safetensors, the rest in JSON.

    ``streams`` holds each training process's stream state (one entry outside data-parallel runs).
    """
    opt_state = opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, st in opt_state["state"].items() for k, v in st.items()}
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, tmp / "sae_state.safetensors")
        save_file(tensors, tmp / "optimizer.safetensors")
        write_json(tmp / "state.json", {
            "step": step, "stream": streams[0], **({"streams": streams} if len(streams) > 1 else {}), "sae_config": sae.cfg.model_dump(),
            "param_groups": opt_state["param_groups"], "saev_core_version": __version__,
        })


def load_training_state(path: Path, device: torch.device) -> tuple[SAE, dict, dict]:
    state = read_json(path / "state.json")
    sae = SAE.from_state(trained_sae_config(state["sae_config"]), load_file(path / "sae_state.safetensors", device=str(device)))
    flat = load_file(path / "optimizer.safetensors", device=str(device))
    opt_state: dict = {"state": {}, "param_groups": state["param_groups"]}
    for key, value in flat.items():
        idx, name = key.split(".", 1)
        opt_state["state"].setdefault(int(idx), {})[name] = value
    return sae, opt_state, state


def stream_state_for(state: dict, world: World, path: Path) -> dict:
    """This process's stream position in a checkpoint, which must come from as many processes."""
    streams = state.get("streams", [state["stream"]])
    if len(streams) != world.size:
        raise ValueError(f"checkpoint {path} was written by {len(streams)} training process(es), this run has {world.size}: "
                         f"resume with the same number of processes (or train into a new --out)")
    return streams[world.rank]


def _new_sae(cfg: TrainConfig, d_in: int, d_sae: int, sample: list[torch.Tensor], device: torch.device) -> SAE:
    """A fresh SAE; ``sample`` (probe batches) sets the input scale and, for SAEs that subtract b_dec, its init."""
    sae_cfg = SAEConfig.model_validate({
        **cfg.sae.model_dump(), "d_in": d_in, "d_sae": d_sae, "input_scale": estimate_input_scale(sample), "seed": cfg.seed,
        "dead_window": cfg.sae.dead_window or max(cfg.batch_size, min(10_000_000, cfg.total_tokens // 10)),
    })
    sae = SAE(sae_cfg).to(device)
    if sae_cfg.apply_b_dec_to_input:
        sae.init_b_dec_(torch.cat(sample)[: 1 << 15].to(device))
    return sae


def _truncate_log(path: Path, start: int) -> None:
    """Drop log rows past the checkpoint a run resumes from (they will be written again)."""
    if start == 0:
        path.unlink(missing_ok=True)
    elif path.exists():
        keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))


def _heldout_summary(sae: SAE, dump: ActivationDump, device: torch.device, max_rows: int) -> dict:
    """FVU and L0 on held-out tokens, overall and per modality, for the training log."""
    m = reconstruction_metrics(sae, dump, device=device, max_rows=max_rows)
    out = {g: {k: m[g].get(k) for k in ("fvu", "l0", "n_tokens")} for g in ("all", "image", "text")}
    return {**out, "dead_fraction": m["dead_fraction"]}


# Fields every SAE of one pass shares: they define the batches (and when they are checkpointed).
SHARED_FIELDS = ("activations", "modalities", "batch_size", "total_tokens", "seed", "buffer_rows", "heldout_fraction",
                 "scale_batches", "checkpoint_every", "device")


def headline(manifest: dict) -> dict:
    """A training manifest's headline figures: held-out FVU and L0 per modality group, and the dead fractions."""
    held, metrics = manifest["heldout"], manifest.get("metrics", {})
    return {**{f"{g}_{k}": held[g].get(k) for g in ("all", "image", "text") for k in ("fvu", "l0")},
            "dead_fraction_window": metrics.get("dead_fraction_window"), "dead_fraction_heldout": held["dead_fraction"]}


def dead_metrics(sae: SAE, heldout: dict, tokens: int) -> dict:
    """The two dead-latent counts a run reports.

    ``dead_fraction_window``: latents with no firing in the last ``dead_window`` training tokens (how
    the OpenAI TopK paper counts them; None when the run is shorter than the window).
    ``dead_fraction_heldout``: latents that never fire on the held-out tokens, whose count is beside
    it (a latent that fires once in N tokens needs a few times N held-out tokens to be seen).
    """
    window = sae.cfg.dead_window
    return {"dead_fraction_window": sae.dead_mask().float().mean().item() if tokens >= window else None,
            "dead_window_tokens": window, "dead_fraction_heldout": heldout["dead_fraction"],
            "heldout_tokens": heldout["all"]["n_tokens"]}


def dead_note(metrics: dict) -> str:
    """``dead_metrics`` in words, for the summaries people read."""
    window = metrics.get("dead_fraction_window")
    seen = (f"{window:.1%} silent over training's last {metrics['dead_window_tokens']:,} tokens"
            if window is not None else f"the run is shorter than the {metrics['dead_window_tokens']:,}-token window")
    return f"dead latents: {seen}, {metrics['dead_fraction_heldout']:.1%} never fire on {metrics['heldout_tokens']:,} held-out tokens"


def sweep_configs(base: dict, axes: dict[str, list]) -> list[TrainConfig]:
    """One config per point of the grid ``axes`` (e.g. {"k": [16, 32]}), each in ``<out>/<k=16,...>``.

    Only fields outside SHARED_FIELDS can vary: the SAEs of a sweep train on the same batches.
    """
    shared = [f for f in axes if f in SHARED_FIELDS or f == "out"]
    unknown = [f for f in axes if f not in TrainConfig.model_fields and f not in field_names()]
    if unknown or shared:
        raise ValueError(f"cannot sweep {unknown + shared}: a sweep varies SAE fields of the train config, not "
                         f"{', '.join(SHARED_FIELDS)} (those define the shared batches)")
    if any(not values for values in axes.values()):
        raise ValueError("every swept field needs at least one value, e.g. --sweep k=16,32")
    names = list(axes)
    return [TrainConfig.model_validate({**base, **dict(zip(names, point)),
                                        "out": str(Path(base["out"]) / ",".join(f"{n}={v}" for n, v in zip(names, point)))})
            for point in itertools.product(*(axes[n] for n in names))]


class _Run:
    """One SAE of a pass: its model, optimizer, log and checkpoints (process 0 writes those)."""

    def __init__(self, cfg: TrainConfig, out: Path, sae: SAE, opt_state: dict | None, start: int, last_ckpt: Path | None,
                 world: World = World()):
        self.cfg, self.out, self.sae, self.last_ckpt, self.world = cfg, out, sae, last_ckpt, world
        self.base_lr = cfg.lr or default_lr(cfg.optimizer, sae.cfg.architecture, sae.cfg.d_sae, cfg.batch_size, cfg.total_tokens)
        self.opt = make_optimizer(cfg.optimizer, sae.parameters(), self.base_lr, cfg.betas)
        if opt_state is not None:
            self.opt.load_state_dict(opt_state)
        sae.train()
        # DDP averages the gradients of the processes' batch slices; the latent statistics are synced after each step
        self.model = DistributedDataParallel(sae, broadcast_buffers=False) if world.active else sae
        self.log_file = self.tracker = None
        self.probe: dict[str, torch.Tensor] = {}  # held-out tokens per modality for each log row (process 0's)
        self._clock = (start, time.perf_counter())  # (step, time) of the last log row: tokens/s between rows
        if world.main:
            log_path = out / "train_log.jsonl"
            _truncate_log(log_path, start)
            self.log_file = open(log_path, "a")
            if cfg.report_to != "none":
                self.tracker = Tracker(cfg.report_to, out, out.name, cfg.flat())

    def log(self, row: dict, timing: dict | None = None) -> None:
        """A row of train_log.jsonl (deterministic: a resumed run writes the same bytes); the tracker
        also gets ``timing`` (tokens/s), which the file leaves out."""
        if self.log_file is not None:
            self.log_file.write(json.dumps(row) + "\n")
            self.log_file.flush()
        if self.tracker is not None:
            self.tracker.log({**row, **(timing or {})}, row["step"])

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    def step(self, x: torch.Tensor, step: int, total: int) -> SAEOutput:
        """One optimizer step on batch x; raises TrainingDiverged on a non-finite loss."""
        cfg, sae = self.cfg, self.sae
        lam = sparsity_coefficient_at(step, total, sae.cfg)
        res = self.model(x, sparsity_coefficient=lam)
        if any_true(self.world, not bool(torch.isfinite(res.loss)), x.device):
            raise TrainingDiverged(
                f"{self.out}: loss became {res.loss.item()} at step {step}; training stopped. Last good checkpoint: "
                f"{self.last_ckpt or 'none yet'}. Lower lr (now {self.base_lr}) or check the activations for outliers."
            )
        self.opt.zero_grad(set_to_none=True)
        res.loss.backward()
        sae.prepare_step_()
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip_norm)
        lr = lr_at(step, total, self.base_lr, cfg.lr_decay_frac, cfg.lr_warmup_frac)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        sae.project_()
        sync_latent_stats(self.world, sae, x.shape[0], cfg.batch_size)
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            (last, t_last), now = self._clock, time.perf_counter()
            row = {"step": done, "tokens": done * cfg.batch_size, "loss": res.loss.item(), "mse": res.mse.item(),
                   "fvu": res.fvu.item(), "l0": res.l0.item(), "l1": res.l1.item(), "aux": res.aux.item(),
                   "dead_fraction": sae.dead_mask().float().mean().item(), "lr": lr, "sparsity_coefficient": lam}
            if self.probe:
                row.update(probe_metrics(sae, self.probe, x.device))
            self.log(row, timing={"tokens_per_s": (done - last) * cfg.batch_size / max(now - t_last, 1e-9)})
            self._clock = (done, time.perf_counter())  # the probe's time is not the step's
        return res

    def checkpoint(self, done: int, streams: list[dict]) -> None:
        self.last_ckpt = self.out / "checkpoints" / f"step-{done:08d}"
        if self.world.main:
            save_training_state(self.last_ckpt, self.sae, self.opt, streams, done)
            for old in _checkpoints(self.out)[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    def finish(self, dump: ActivationDump, device: torch.device, stream: ShuffledBatches, total: int, tokens_per_s: float,
               elapsed: float, sweep: list[str] | None, processes: int = 1) -> dict:
        sae, cfg = self.sae, self.cfg
        sae.eval()
        metrics = reconstruction_metrics(sae, dump, device=device)
        sparsity = torch.log10(torch.tensor(metrics.pop("firing_rates")) + 1e-10)
        save_sae(sae, self.out / "sae", sparsity=sparsity, metadata={
            "model_name": dump.manifest["model"], "hook_name": dump.manifest["hook"], "hook_layer": dump.manifest["layer"],
            "dataset_path": dump.manifest["dataset"]["path"], "context_size": None, "prepend_bos": True,
        })
        manifest = {
            "kind": "saev.sae_run", "saev_core_version": __version__, "config": cfg.model_dump(),
            "sae": "sae", "sae_config": sae.cfg.model_dump(), "activations": str(dump.path), "lr": self.base_lr,
            "steps": total, "tokens": total * cfg.batch_size, "bad_shards": [str(dump.files[i]) for i in sorted(stream.bad_files)],
            "train_seconds_this_run": elapsed, "tokens_per_s": tokens_per_s, "heldout": metrics,
            "metrics": dead_metrics(sae, metrics, total * cfg.batch_size),
        }
        if sweep:
            manifest["trained_with"] = sweep  # the runs of one pass over the data
        if processes > 1:
            manifest["processes"] = processes  # data-parallel; bad_shards above are process 0's
        write_json(self.out / "manifest.json", manifest)
        return manifest


def train_sae(cfg: TrainConfig, overwrite: bool = False, stop_at_step: int | None = None) -> dict:
    """Train (or resume) and return the run manifest. ``stop_at_step`` ends early as a crash would."""
    return train_saes([cfg], overwrite=overwrite, stop_at_step=stop_at_step)[0]


def _check_shared(cfgs: list[TrainConfig]) -> None:
    if not cfgs:
        raise ValueError("no training configs given")
    for f in SHARED_FIELDS:
        values = {json.dumps(getattr(c, f), default=str) for c in cfgs}
        if len(values) > 1:
            raise ValueError(f"the SAEs of one pass must share {f!r} (they train on the same batches), got {sorted(values)}")
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) < len(outs):
        raise ValueError("two SAEs of one pass have the same output directory: give each its own out")


def train_saes(cfgs: list[TrainConfig], overwrite: bool = False, stop_at_step: int | None = None) -> list[dict]:
    """Train several SAEs (a sweep over k, lambda, lr, width...) from one read and shuffle of the data.

    Each batch is read and shuffled once and every SAE takes a step on it. Each run keeps its own
    output directory, log, checkpoints and manifest, exactly as if trained alone (same batches,
    same weights); a stopped pass resumes from the newest checkpoint all unfinished runs have, and
    runs that finished are left as they are. A run whose loss diverges stops with its last
    checkpoint while the others go on; the pass then raises TrainingDiverged naming it.

    Started by ``torchrun`` or ``accelerate launch``, the processes train data-parallel
    (``saev_core.sae.distributed``): each reads its own shards and batch_size / world_size tokens
    per step; process 0 writes, and every process returns the manifests.
    """
    _check_shared(cfgs)
    lead = cfgs[0]
    world, device = _placement(lead)
    dump = _open_dump(cfgs, world, device)
    total = lead.steps
    if world.main:
        for cfg in cfgs:
            _upgrade_run_config(Path(cfg.out))
            claim_output_dir(cfg.out, cfg.identity(), overwrite, "training run")
    barrier(world)  # the others read what process 0 claimed
    manifests, pending = _finished_and_pending(cfgs, total)
    if not pending:
        return [manifests[i] for i in range(len(cfgs))]
    start = max(set.intersection(*(set(c) for *_, c in pending)), default=0)
    stream = ShuffledBatches(dump, MODALITY_SETS[lead.modalities], lead.batch_size // world.size, seed=lead.seed, buffer_rows=lead.buffer_rows,
                             rank=world.rank, world_size=world.size, workers=lead.reader_workers, pin_memory=device.type == "cuda")
    runs = _start_runs(lead, pending, start, dump, stream, world, device)
    t0 = time.perf_counter()
    try:
        done = _train_loop(lead, runs, stream, dump, world, device, start, total, stop_at_step, len(cfgs))
    finally:
        for run in runs.values():
            run.close()
    if "stopped_at_step" in done:
        return [{**done, "last_checkpoint": str(runs[i].last_ckpt)} if i in runs else manifests[i] for i in range(len(cfgs))]
    elapsed = time.perf_counter() - t0 - done["eval_seconds"]
    tokens_per_s = done["tokens"] / elapsed if elapsed > 0 else math.nan
    sweep = [str(r.out) for r in runs.values()] if len(cfgs) > 1 else None
    if world.main:
        for i, run in runs.items():
            manifests[i] = run.finish(dump, device, stream, total, tokens_per_s, elapsed, sweep, world.size)
    manifests = broadcast(world, manifests)
    if done["failed"]:
        raise TrainingDiverged("; ".join(done["failed"][i] for i in sorted(done["failed"])))
    return [manifests[i] for i in range(len(cfgs))]


def _placement(lead: TrainConfig) -> tuple[World, torch.device]:
    """The launched processes and this one's device, with the allocators training wants."""
    world = launched_world()
    device = resolve_device(lead.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cpu":
        reuse_freed_memory()
    if lead.reader_workers > 1:
        parallel_decode_pool()
    if lead.batch_size % world.size:
        raise ValueError(f"batch_size {lead.batch_size} does not split over {world.size} processes: use a multiple of {world.size}")
    return world, device


def _open_dump(cfgs: list[TrainConfig], world: World, device: torch.device) -> ActivationDump:
    """The activations, checked to hold rows of the trained modalities and to fit each SAE in memory."""
    lead = cfgs[0]
    modalities = MODALITY_SETS[lead.modalities]
    dump = ActivationDump.open(lead.activations, lead.heldout_fraction)
    rows = dump.manifest.get("rows")
    if rows is not None and sum(rows.get(m, 0) for m in modalities) == 0:
        raise ValueError(f"the dump at {lead.activations} has no {'+'.join(modalities)} rows to train on ({dump.manifest.get('n_samples', 0)} "
                         f"samples kept, {dump.manifest.get('n_rejected', 0)} rejected; see its rejected/ files)")
    for cfg in cfgs:
        check_memory(dump.d_in, cfg.width(dump.d_in), device, cfg.batch_size // world.size)
    return dump


def _upgrade_run_config(out: Path) -> None:
    """A run directory started before TrainConfig nested its SAE config holds a flat config.json
    with every architecture's fields: rewrite it as today's identity of the same config, so the
    run resumes (its checkpoints load as they are)."""
    path = out / "config.json"
    if not path.is_file() or "sae" in (old := read_json(path)) or "architecture" not in old:
        return
    write_json(path, TrainConfig.model_validate({**own_fields(old, keep=TrainConfig.model_fields), "out": str(out)}).identity())


def _finished_and_pending(cfgs: list[TrainConfig], total: int) -> tuple[dict[int, dict], list[tuple[int, TrainConfig, Path, dict[int, Path]]]]:
    """The manifests of runs that finished with their config, and the others with their checkpoints by step."""
    manifests, pending = {}, []
    for i, cfg in enumerate(cfgs):
        out = Path(cfg.out)
        ckpts = {int(p.name.split("-")[1]): p for p in _checkpoints(out)}
        if ckpts and (out / "manifest.json").exists() and max(ckpts) >= total:
            manifests[i] = read_json(out / "manifest.json")  # finished with this config: nothing to redo
        else:
            pending.append((i, cfg, out, ckpts))
    return manifests, pending


def _start_runs(lead: TrainConfig, pending: list, start: int, dump: ActivationDump, stream: ShuffledBatches, world: World,
                device: torch.device) -> dict[int, _Run]:
    """Each pending run from its checkpoint at ``start`` (the stream too), or new from a probe of the
    data (its scale and init); process 0's runs get the held-out probe their log rows report on.
    ``lead`` (the pass's first config) sets what the runs share."""
    modalities = MODALITY_SETS[lead.modalities]
    sample: list[torch.Tensor] = []
    runs: dict[int, _Run] = {}
    for i, cfg, out, ckpts in pending:
        if start:
            sae, opt_state, state = load_training_state(ckpts[start], device)
            if sae.cfg.d_in != dump.d_in:
                raise ValueError(f"checkpoint {ckpts[start]} has d_in={sae.cfg.d_in} but the activations have d_in={dump.d_in}")
            stream.load_state(stream_state_for(state, world, ckpts[start]))
            runs[i] = _Run(cfg, out, sae, opt_state, start, ckpts[start], world)
        else:
            if not sample:  # every process draws the same probe (all shards), hence the same scale and init
                probe = ShuffledBatches(dump, modalities, lead.batch_size, seed=lead.seed + 1, buffer_rows=lead.buffer_rows, workers=0)
                sample = [x.float() for _, x in zip(range(lead.scale_batches), probe)]
            runs[i] = _Run(cfg, out, _new_sae(cfg, dump.d_in, cfg.width(dump.d_in), sample, device),
                           None, 0, None, world)
    if lead.probe_rows and world.main:
        probe = heldout_probe(dump, lead.probe_rows, modalities)
        for run in runs.values():
            run.probe = probe
    return runs


def _train_loop(lead: TrainConfig, runs: dict[int, _Run], stream: ShuffledBatches, dump: ActivationDump, world: World,
                device: torch.device, start: int, total: int, stop_at_step: int | None, n_cfgs: int) -> dict:
    """Steps ``start``..``total`` of every run on the shared batches, with checkpoints and held-out
    evaluations; a diverged run leaves ``runs``. Returns {"stopped_at_step"} when stopped early,
    else the tokens trained, the evaluation's seconds and the failed runs' messages."""
    failed: dict[int, str] = {}
    batches = iter(stream)
    tokens, eval_seconds = 0, 0.0
    desc = f"train {lead.sae.architecture} SAE" if n_cfgs == 1 else f"train {len(runs)} SAEs"
    with tqdm(total=total, initial=start, desc=desc, unit="step", disable=not (lead.progress and world.main)) as pbar:
        for step in range(start, total):
            if stop_at_step is not None and step >= stop_at_step:
                return {"stopped_at_step": step}
            x = next(batches).to(device, non_blocking=True).float()
            res = None
            for i, run in list(runs.items()):
                try:
                    res = run.step(x, step, total)
                except TrainingDiverged as e:
                    failed[i] = str(e)
                    run.close()
                    del runs[i]
            if not runs:
                break
            tokens += lead.batch_size
            done = step + 1
            if res is not None and n_cfgs == 1 and (done % lead.log_every == 0 or done == total):
                pbar.set_postfix({"loss": f"{res.loss.item():.3g}", "fvu": f"{res.fvu.item():.3g}", "l0": f"{res.l0.item():.3g}"}, refresh=False)
            if done % lead.checkpoint_every == 0 or done == total:
                eval_seconds += _checkpoint_all(lead, runs, stream, dump, world, device, done, total)
            pbar.update(1)
    return {"tokens": tokens, "eval_seconds": eval_seconds, "failed": failed}


def _checkpoint_all(lead: TrainConfig, runs: dict[int, _Run], stream: ShuffledBatches, dump: ActivationDump, world: World,
                    device: torch.device, done: int, total: int) -> float:
    """Checkpoint every run at step ``done`` (with every process's stream position), then log the
    held-out evaluation before the last step; returns the evaluation's seconds."""
    streams = all_gather(world, stream.state())
    for run in runs.values():
        run.checkpoint(done, streams)
    seconds = 0.0
    if done < total and lead.eval_rows and world.main:
        t_eval = time.perf_counter()
        for run in runs.values():
            run.log({"step": done, "heldout": _heldout_summary(run.sae, dump, device, lead.eval_rows)})
            run.sae.train()
        seconds = time.perf_counter() - t_eval
    barrier(world)
    return seconds

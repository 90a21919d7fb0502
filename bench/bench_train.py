"""SAE training throughput and final quality: saev against the ``sae-lens`` package, same
architecture, same hyper-parameters, same activations, same machine, same run.

    .venv/bin/python bench/bench_train.py                      # topk + relu, 300 steps, 3 repeats, CPU
    .venv/bin/python bench/bench_train.py --steps 600 --repeats 5 --device cuda
    .venv/bin/python bench/bench_train.py --archs topk --parquet --profile 25

Prints one JSON report on stdout (progress goes to stderr).

What is compared
- Data. The training stream saev itself draws (the first ``steps`` batches of
  ``ShuffledBatches(ActivationDump.open(dump, heldout_fraction), ("image", "text"), batch, seed)``)
  is exported to a float32 .npy, and so are the held-out rows. SAELens's own trainer
  (``sae_lens.training.sae_trainer.SAETrainer``) gets exactly those batches, in that order, as
  its data provider. saev's ``train_sae`` gets the same batches from memory too: the bench swaps
  the stream object it builds for one that yields the exported array (its input-scale probe still
  reads the shards). So both trainers are timed on the same in-memory data; ``--parquet`` adds
  stock ``train_sae`` streaming from the Parquet shards as a third variant ("saev_parquet"),
  which ends with bit-identical weights to "saev" (same batches), only the batch source differs.
- Input normalisation. saev scales inputs by s = sqrt(d_in) / mean||x||, estimated on
  ``scale_batches`` batches of a probe stream. The bench computes s the same way once and hands
  it to SAELens (``normalize_activations="expected_average_only_in"`` with the trainer's
  ``activation_scaler.scaling_factor`` preset, so SAELens skips its estimation pass, which would
  otherwise eat training batches, and folds s into the weights at the end as usual). The saev
  runs are checked to have estimated the same s.
- Architecture / hyper-parameters (defaults: d_sae = 8 * d_in, k = 16, batch 1024, lr 2e-4, Adam
  betas (0.9, 0.999), lr constant then linear decay to 0 over the last 20% of steps):
  * topk: saev ``architecture="topk"`` (unit-norm decoder, parallel-gradient removal, AuxK);
    SAELens ``TopKTrainingSAE`` with ``rescale_acts_by_decoder_norm=True`` (its way of a unit-norm
    decoder), ``decoder_init_norm=1`` (saev's init norm), ``apply_b_dec_to_input=True``, AuxK
    coefficient 1/32 (saev's; SAELens's default is 1), dead window = saev's in steps.
    Both minimise summed MSE + AuxK/32 and clip the gradient norm at 1. Left as each library
    does it: saev inits b_dec at the geometric median and keeps decoder rows at unit norm; SAELens
    b_dec = 0 and scales its AuxK term by min(n_dead / k_aux, 1).
  * relu: saev ``architecture="relu"`` (the paper's SAE-V) vs SAELens ``StandardTrainingSAE``.
    Both use loss = sum_d (x - x_hat)^2 averaged over the batch + lambda * mean_batch(sum_i
    f_i ||W_dec[i]||) on the scaled input, i.e. the L1 term is scaled the same way (SAELens's
    ``lp_norm=1``); lambda (``--l1-coefficient``, default 5) warms up over the first 5% of steps
    in both, W_dec rows start at norm 0.1 with W_enc = W_dec^T, no b_dec subtraction
    (``apply_b_dec_to_input=False``). Same lr as topk unless ``--relu-lr`` is given. L0 is not
    fixed by the architecture here, so it is reported for both: compare FVU only where L0 matches.
- Throughput: tokens/s of the training loop only. saev: ``train_sae``'s own ``tokens_per_s``
  (its loop: batch fetch, forward/backward, Adam, decoder renorm, a log row every 50 steps and
  the final checkpoint write; not the scale estimation, SAE construction, held-out evaluation or
  export). SAELens: the wall time of ``SAETrainer.fit()`` (loop + folding the scale), timed in a
  worker process (``bench/_saelens_train.py``) that runs in SAELens's own venv, imports it once
  and serves all jobs, so its import is never timed. Runs are interleaved (saev, SAELens, then
  SAELens, saev, ...) because the CPU is shared; medians over ``--repeats`` are reported, after
  one short untimed warm-up run of each.
- Threads: ``--threads 1`` by default, for both libraries. The machine this was written on has 2
  cores shared with other users; with 2 torch threads every parallel op waits whenever one of
  its threads is descheduled (measured there with a neighbour busy: one 1024x128 -> 1024 topk
  step took 23 ms on 1 thread and 177 ms on 2), which turns the timing into a count of ops times
  scheduler slices. ``--threads 0`` keeps torch's default (all cores); use it on a quiet machine.
- Quality: both final SAEs are saved in SAELens's inference format (scale folded in) and read back
  by the same code here, which computes FVU = sum||x - x_hat||^2 / sum||x - mean(x)||^2 and L0
  (mean active latents per token) on the held-out rows, in float64.

SAELens lives in its own venv (it pins its own dependency versions):
    python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens
If ``--saelens-python`` does not exist the SAELens part is skipped with a message (saev alone is
still measured) and the exit status is 2.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import saev_core.train as saev_train  # noqa: E402
from saev_core.activations import ActivationDump, ShuffledBatches, iter_rows  # noqa: E402
from saev_core.sae import estimate_input_scale  # noqa: E402
from saev_core.train import TrainConfig, train_sae  # noqa: E402

MODALITIES = ("image", "text")
SAELENS_ARCH = {"topk": "topk", "relu": "standard"}


def log(msg: str) -> None:
    print(f"[bench_train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- data ----------------------------------------------------------------------------------


def export_data(args, tmp: Path) -> dict:
    """Write the first ``steps`` training batches saev would draw and the held-out rows to .npy."""
    dump = ActivationDump.open(args.activations, args.heldout_fraction)
    stream = iter(ShuffledBatches(dump, MODALITIES, args.batch_size, seed=args.seed))
    train = np.concatenate([next(stream).numpy() for _ in range(args.steps)])
    heldout = torch.cat(list(iter_rows(dump, MODALITIES, "heldout"))).numpy()
    # The input scale exactly as saev_core.train._new_sae estimates it (probe stream, seed + 1).
    scale_batches = TrainConfig.model_fields["scale_batches"].default
    probe = iter(ShuffledBatches(dump, MODALITIES, args.batch_size, seed=args.seed + 1))
    scale = estimate_input_scale(next(probe) for _ in range(scale_batches))
    paths = {"train": tmp / "train.npy", "heldout": tmp / "heldout.npy"}
    np.save(paths["train"], train.astype(np.float32, copy=False))
    np.save(paths["heldout"], heldout.astype(np.float32, copy=False))
    return {"paths": paths, "train": train, "heldout": heldout, "input_scale": scale, "d_in": dump.d_in}


class _MemoryBatches:
    """Stands in for saev's ShuffledBatches of the main stream: yields the exported batches."""

    def __init__(self, train: np.ndarray, batch_size: int):
        self.train, self.batch_size, self.bad_files, self.i = train, batch_size, set(), 0

    def state(self) -> dict:
        return {"position": {"epoch": 0, "chunk": 0, "batch": self.i}, "bad_files": []}

    def __iter__(self):
        while (self.i + 1) * self.batch_size <= len(self.train):
            b = torch.from_numpy(self.train[self.i * self.batch_size:(self.i + 1) * self.batch_size])
            self.i += 1
            yield b
        raise RuntimeError("the exported training stream ran out of batches")


@contextlib.contextmanager
def saev_reads_memory(train: np.ndarray, seed: int):
    """Within the block, train_sae's main stream (seed == ``seed``) yields ``train``; the input-scale
    probe (seed + 1) still reads the shards. Only the bench's own module reference is swapped."""
    real = saev_train.ShuffledBatches

    def factory(dump, modalities, batch_size, seed=0, **kw):
        if seed == main_seed:
            return _MemoryBatches(train, batch_size)
        return real(dump, modalities, batch_size, seed=seed, **kw)

    main_seed = seed
    saev_train.ShuffledBatches = factory
    try:
        yield
    finally:
        saev_train.ShuffledBatches = real


# ---- metrics (shared by both libraries) ----------------------------------------------------


@torch.no_grad()
def heldout_metrics(sae_dir: Path, x: np.ndarray, chunk: int = 4096) -> dict:
    """FVU and L0 of a SAELens-format SAE directory (standard or topk, scale folded) on rows ``x``."""
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(f"{sae_dir}: normalize_activations={cfg['normalize_activations']!r}, expected it folded")
    w = {k: v.double() for k, v in load_file(str(sae_dir / "sae_weights.safetensors")).items()}
    arch, k = cfg["architecture"], cfg.get("k")
    a = 1.0 if cfg.get("apply_b_dec_to_input", True) else 0.0
    dec_norm = w["W_dec"].norm(dim=1) if (arch == "topk" and cfg.get("rescale_acts_by_decoder_norm")) else None
    xt = torch.from_numpy(x).double()
    sq_err, active, fired = 0.0, 0, torch.zeros(cfg["d_sae"], dtype=torch.bool)
    for i in range(0, len(xt), chunk):
        xb = xt[i:i + chunk]
        pre = (xb - a * w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        if dec_norm is not None:
            pre = pre * dec_norm
        if arch == "topk":
            vals, idx = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        elif arch == "standard":
            f = pre.relu()
        else:
            raise ValueError(f"{sae_dir}: architecture {arch!r} not handled by the bench")
        x_hat = (f / dec_norm if dec_norm is not None else f) @ w["W_dec"] + w["b_dec"]
        sq_err += (xb - x_hat).pow(2).sum().item()
        active += int((f > 0).sum())
        fired |= (f > 0).any(dim=0)
    total_var = (xt - xt.mean(dim=0)).pow(2).sum().item()
    return {"fvu": sq_err / total_var, "explained_variance": 1 - sq_err / total_var, "l0": active / len(xt),
            "dead_fraction_heldout": 1 - fired.double().mean().item()}


# ---- the two trainers ----------------------------------------------------------------------


def saev_config(args, arch: str, out: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        activations=str(args.activations), out=str(out), architecture=arch, expansion_factor=args.expansion,
        k=args.k if arch == "topk" else None, batch_size=args.batch_size, total_tokens=steps * args.batch_size,
        lr=args.relu_lr if (arch == "relu" and args.relu_lr) else args.lr, betas=(0.9, 0.999),
        lr_decay_frac=0.2, l1_coefficient=args.l1_coefficient, l1_warmup_frac=0.05,
        heldout_fraction=args.heldout_fraction, device=args.device, seed=args.seed, progress=False,
    )


def run_saev(args, data: dict, arch: str, out: Path, steps: int, from_parquet: bool = False) -> dict:
    cfg = saev_config(args, arch, out, steps)
    ctx = contextlib.nullcontext() if from_parquet else saev_reads_memory(data["train"], args.seed)
    with ctx:
        manifest = train_sae(cfg, overwrite=True)
    s = manifest["sae_config"]["input_scale"]
    if abs(s - data["input_scale"]) > 1e-6 * data["input_scale"]:
        raise RuntimeError(f"saev estimated input scale {s}, the bench {data['input_scale']}: the runs would not match")
    return {"tokens_per_s": manifest["tokens_per_s"], "seconds": manifest["train_seconds_this_run"],
            "sae_dir": out / "sae", "saev_reported": manifest["heldout"]["all"], "dead_window": manifest["sae_config"]["dead_window"]}


class SAELensWorker:
    """The SAELens venv's python running ``_saelens_train.py``: one JSON job/reply per line."""

    def __init__(self, python: str, threads: int):
        self.proc = subprocess.Popen([python, str(Path(__file__).with_name("_saelens_train.py")), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the SAELens worker exited (status {self.proc.wait()}); see its stderr above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"SAELens worker: {reply.get('error')}")
        return reply

    def train(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def saelens_job(args, data: dict, arch: str, out: Path, steps: int) -> dict:
    scfg = saev_config(args, arch, out or "unused", steps)
    # saev's dead window counts tokens (default total_tokens / 10 at this size); SAELens counts steps.
    dead_window_tokens = max(args.batch_size, min(10_000_000, scfg.total_tokens // 10))
    return {
        "arch": SAELENS_ARCH[arch], "train_npy": str(data["paths"]["train"]), "steps": steps,
        "batch_size": args.batch_size, "d_sae": args.expansion * data["d_in"], "k": args.k if arch == "topk" else None,
        "lr": scfg.lr, "betas": list(scfg.betas), "lr_decay_steps": round(scfg.lr_decay_frac * steps),
        "l1_coefficient": args.l1_coefficient, "l1_warm_up_steps": round(scfg.l1_warmup_frac * steps),
        "aux_coefficient": scfg.aux_coefficient, "dead_feature_window": max(1, dead_window_tokens // args.batch_size),
        "input_scale": data["input_scale"], "apply_b_dec_to_input": arch == "topk",
        "decoder_init_norm": 1.0 if arch == "topk" else 0.1, "device": args.device, "seed": args.seed,
        "out": str(out) if out else None,
    }


# ---- report --------------------------------------------------------------------------------


def summarise(runs: list[dict], heldout: np.ndarray) -> dict:
    tps = [r["tokens_per_s"] for r in runs]
    quality = [heldout_metrics(Path(r["sae_dir"]), heldout) for r in runs]
    out = {
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_runs": [round(t, 1) for t in tps],
        "fvu": statistics.median(q["fvu"] for q in quality),
        "explained_variance": statistics.median(q["explained_variance"] for q in quality),
        "l0": statistics.median(q["l0"] for q in quality),
        "dead_fraction_heldout": statistics.median(q["dead_fraction_heldout"] for q in quality),
        "fvu_runs": [round(q["fvu"], 5) for q in quality],
    }
    if "saev_reported" in runs[-1]:  # cross-check of the shared metric code against saev's own evaluation
        out["saev_own_eval_fvu"] = runs[-1]["saev_reported"]["fvu"]
        out["saev_own_eval_l0"] = runs[-1]["saev_reported"]["l0"]
    return out


def profile_saev(args, data: dict, arch: str, out: Path, top: int) -> dict:
    """cProfile one saev run's training loop only (in-memory stream): on from the first batch
    fetch until train_sae calls its held-out evaluation, right after the loop."""
    prof = cProfile.Profile()
    cfg = saev_config(args, arch, out, args.steps)
    real_eval, real_iter = saev_train.reconstruction_metrics, _MemoryBatches.__iter__

    def profiled_iter(self):
        prof.enable()
        yield from real_iter(self)

    def eval_after_loop(*a, **kw):
        prof.disable()
        return real_eval(*a, **kw)

    _MemoryBatches.__iter__, saev_train.reconstruction_metrics = profiled_iter, eval_after_loop
    try:
        with saev_reads_memory(data["train"], args.seed):
            manifest = train_sae(cfg, overwrite=True)
    finally:
        _MemoryBatches.__iter__, saev_train.reconstruction_metrics = real_iter, real_eval
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    stats.print_stats(top)
    print(buf.getvalue(), file=sys.stderr)
    total = sum(v[2] for v in stats.stats.values())
    rows = []
    for (file, line, fn), (_, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{Path(file).name}:{line}({fn})" if file != "~" else fn
        rows.append({"function": where, "calls": nc, "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3),
                     "share_of_loop": round(tt / total, 3)})
    return {"loop_seconds_profiled": round(total, 2), "tokens_per_s_under_profiler": manifest["tokens_per_s"], "top_by_own_time": rows}


def machine_info(args, worker: SAELensWorker | None, loadavg_start: list[float]) -> dict:
    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_saev": torch.__version__, "torch_threads_saev": torch.get_num_threads(), "device": args.device,
        "loadavg_start": loadavg_start,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    if worker:
        info.update({"sae_lens_version": worker.info["sae_lens_version"], "torch_saelens": worker.info["torch_version"],
                     "torch_threads_saelens": worker.info["torch_threads"]})
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activations", type=Path, default=ROOT / "data/runs/dump-demo-rlaif-L0", help="dump directory (`saev dump`)")
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300 keeps the default run under ~5 min on 2 cores)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per library and architecture (median reported)")
    p.add_argument("--warmup-steps", type=int, default=10, help="untimed warm-up run per library/arch first (0: none)")
    p.add_argument("--archs", default="topk,relu", help="comma list of topk, relu")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i], for both libraries")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion * d_in")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--relu-lr", type=float, default=None, help="lr for relu/standard (default: --lr)")
    p.add_argument("--l1-coefficient", type=float, default=5.0, help="relu/standard sparsity coefficient (paper: 5)")
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for both libraries (default 1; 0 = torch's default). See the docstring.")
    p.add_argument("--saelens-python", default="/tmp/saelens-venv/bin/python")
    p.add_argument("--parquet", action="store_true", help="also time stock train_sae streaming from the Parquet shards")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile one saev run per arch, top N functions")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (exported data, all SAEs)")
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if bad := [a for a in archs if a not in SAELENS_ARCH]:
        p.error(f"unknown arch(s) {bad}; choose from {list(SAELENS_ARCH)}")
    if args.steps < 5 or args.repeats < 1:
        p.error("need --steps >= 5 and --repeats >= 1")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    worker, skipped = None, None
    if not Path(args.saelens_python).exists():
        skipped = (f"SAELens python {args.saelens_python} not found: SAELens part skipped. Create it with "
                   "`python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens` "
                   "or pass --saelens-python")
        log(skipped)
    else:
        log("starting the SAELens worker")
        worker = SAELensWorker(args.saelens_python, args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="bench_train-"))
    t_start, loadavg_start = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    try:
        log(f"exporting {args.steps} x {args.batch_size} training tokens and the held-out rows to {tmp}")
        data = export_data(args, tmp)
        log(f"d_in={data['d_in']} train rows={len(data['train'])} held-out rows={len(data['heldout'])} input scale s={data['input_scale']:.6g}")
        results: dict = {}
        for arch in archs:
            if args.warmup_steps:
                log(f"{arch}: warm-up ({args.warmup_steps} steps each, untimed)")
                run_saev(args, data, arch, tmp / f"warm-saev-{arch}", args.warmup_steps)
                if worker:
                    worker.train(saelens_job(args, data, arch, None, args.warmup_steps))
            runs: dict[str, list] = {"saev": [], "saelens": [], "saev_parquet": []}
            for rep in range(args.repeats):
                order = ["saev", "saelens"] if rep % 2 == 0 else ["saelens", "saev"]
                if args.parquet:
                    order.append("saev_parquet")
                for lib in order:
                    out = tmp / f"{lib}-{arch}-{rep}"
                    if lib == "saelens":
                        if not worker:
                            continue
                        r = worker.train(saelens_job(args, data, arch, out, args.steps))
                        r["sae_dir"] = out
                    else:
                        r = run_saev(args, data, arch, out, args.steps, from_parquet=lib == "saev_parquet")
                    runs[lib].append(r)
                    log(f"{arch} repeat {rep + 1}/{args.repeats} {lib:12s} {r['tokens_per_s']:9.0f} tokens/s")
            res = {lib: summarise(rs, data["heldout"]) for lib, rs in runs.items() if rs}
            if "saelens" in res:
                res["throughput_ratio_saev_over_saelens"] = res["saev"]["tokens_per_s"] / res["saelens"]["tokens_per_s"]
                res["fvu_diff_saev_minus_saelens"] = res["saev"]["fvu"] - res["saelens"]["fvu"]
                res["l0_diff_saev_minus_saelens"] = res["saev"]["l0"] - res["saelens"]["l0"]
            if args.profile:
                log(f"{arch}: profiling one saev run")
                res["saev_profile_top"] = profile_saev(args, data, arch, tmp / f"profile-{arch}", args.profile)
            results[arch] = res
        report = {
            "benchmark": "saev vs sae-lens SAE training",
            "machine": {**machine_info(args, worker, loadavg_start), "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
            "settings": {
                "activations": str(args.activations), "d_in": data["d_in"], "d_sae": args.expansion * data["d_in"],
                "k": args.k, "batch_size": args.batch_size, "steps": args.steps, "tokens_per_run": args.steps * args.batch_size,
                "lr": args.lr, "relu_lr": args.relu_lr or args.lr, "betas": [0.9, 0.999], "lr_decay": "linear to 0 over last 20%",
                "l1_coefficient": args.l1_coefficient, "l1_warmup": "first 5% of steps", "input_scale": data["input_scale"],
                "input_normalisation": "s = sqrt(d_in)/mean||x|| estimated once (saev's probe); saev estimates the same s, "
                                       "SAELens gets it as activation_scaler.scaling_factor (expected_average_only_in)",
                "data": "same exported token stream, in memory, for saev and SAELens",
                "heldout_rows": len(data["heldout"]), "repeats": args.repeats, "warmup_steps": args.warmup_steps,
                "order": "interleaved, alternating which library goes first",
                "saelens_python": args.saelens_python, "torch_threads": args.threads or "torch default",
                "not_matched": [
                    "AuxK scale: both add AuxK/32 in squared-error units; SAELens also scales it by min(n_dead/k_aux, 1)",
                    "topk decoder: saev renormalises W_dec rows to 1 and removes the parallel gradient; SAELens leaves "
                    "W_dec free and divides by its row norms (rescale_acts_by_decoder_norm)",
                    "topk b_dec init: saev geometric median of the data, SAELens zeros",
                    "W_dec init: saev normalised Gaussian rows, SAELens normalised kaiming-uniform rows (same norms)",
                ],
            },
            "results": results,
            "saelens_skipped": skipped,
            "bench_wall_s": round(time.perf_counter() - t_start, 1),
        }
        print(json.dumps(report, indent=2, default=str))
    finally:
        if worker:
            worker.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 2 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())

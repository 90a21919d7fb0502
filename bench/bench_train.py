"""SAE training: saev against sparsify and SAELens, same batches, same machine, same run, each
library at its best learning rate.

    .venv/bin/python bench/bench_train.py                         # both cases, topk, 3 seeds, CPU
    .venv/bin/python bench/bench_train.py --cases demo --seeds 1  # quick look
    .venv/bin/python bench/bench_train.py --arch relu             # the paper's SAE: saev vs SAELens
    .venv/bin/python bench/bench_train.py --scaling               # saev tok/s and memory, d_sae 1k..65k

Prints one JSON report on stdout and a Markdown summary on stderr.

Cases
- ``demo``: the demo dump ``make run`` writes (d_in 128), d_sae 1024, k 16, batch 1024, 300 steps.
- ``synthetic``: d_in 512, d_sae 8192, k 32, batch 1024, one epoch of 200k rows of
  ``bench/_synthetic.py`` (sparse combinations of 16k ground-truth directions with Zipf
  frequencies, an offset and 2% noise), written as a dump.

Protocol
- Data: saev's own training stream for the case (``ShuffledBatches`` of the train split, seed 0)
  is exported to .npy once; every library trains on exactly those batches, in that order, from
  memory. saev runs its real trainer (``train_sae``): the bench swaps only the stream objects it
  builds for ones that yield the exported arrays, so its input-scale probe also sees the bench's
  probe rows and every library gets the same s = sqrt(d_in) / mean||x||.
- Splits: the dump's held-out samples (by sample id) are split again by a salted hash of the id
  into a *validation* half, used only to pick each library's learning rate, and a *test* half,
  used only for the reported FVU.
- Learning rates: each variant walks from its own default lr in factors of 2 (seed 0, the full
  budget) while validation FVU falls; the lr with the lowest validation FVU is kept and the timed
  runs use it. ``--lr-mults`` tries a fixed list instead.
- Timed runs: ``--seeds`` seeds (the SAE init; the batches stay the same), interleaved and with
  the order rotated each round since the CPU is shared; medians and ranges are reported, after
  one untimed warm-up run of each variant. Throughput counts only each library's training loop.
- FVU against tokens: each variant at its best lr is also trained on the first 1/4 and 1/2 of
  the batches (seed 0), evaluated on the test half.
- Threads: 1 torch thread for every library by default (``--threads``); see RESULTS.md for why.

Variants (TopK): ``saev`` (its defaults: see ``saev_core.sae.optim``; ``saev-adam`` and
``saev-signum`` pick the optimizer, ``saev-noaux`` turns AuxK off, as sparsify's default has it), ``sparsify-adam`` and
``sparsify-signum`` (``SparseCoder`` in sparsify's own loop, ``_sparsify_train.py``; signum is
sparsify's default), ``saelens`` (``TopKTrainingSAE`` in ``SAETrainer``, ``_saelens_train.py``).
Each keeps its own recipe (init, loss normalisation, AuxK): only the lr is tuned. For relu only
saev and SAELens's ``StandardTrainingSAE`` (sparsify has no L1 SAE).

The peers live in their own venvs (they pin their own dependency versions):
    python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens
    python3 -m venv /tmp/sparsify-venv && /tmp/sparsify-venv/bin/pip install torch==2.13.0 eai-sparsify schedulefree
A missing venv skips that library with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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
sys.path.insert(0, str(ROOT / "bench"))

import saev_core.sae.train as saev_train  # noqa: E402
from _synthetic import write_synthetic_dump  # noqa: E402
from saev_core.activations.shards import ActivationDump, ShuffledBatches, is_heldout, iter_rows  # noqa: E402
from saev_core.sae.optim import default_lr  # noqa: E402
from saev_core.sae.model import estimate_input_scale  # noqa: E402
from saev_core.sae.train import TrainConfig, train_sae  # noqa: E402

MODALITIES = ("image", "text")
CASES = {
    "demo": {"d_sae": 1024, "k": 16, "batch_size": 1024, "steps": 300, "heldout_fraction": 0.05},
    "synthetic": {"d_in": 512, "d_sae": 8192, "k": 32, "batch_size": 1024, "train_rows": 200_000, "heldout_fraction": 0.1},
}


def log(msg: str) -> None:
    print(f"[bench_train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- data ----------------------------------------------------------------------------------


def prepare_case(name: str, args, tmp: Path) -> dict:
    """Export the case's training batches, probe batches and the validation/test rows."""
    case = dict(CASES[name])
    if args.quick:  # a smoke run of the whole protocol: a tenth of the budget
        case.update({"steps": 30} if name == "demo" else {"train_rows": 20_000})
    if args.batch_size and name == "demo":  # same token budget in batches of another size
        case["steps"] = case["steps"] * case["batch_size"] // args.batch_size
    case["batch_size"] = args.batch_size or case["batch_size"]
    if name == "demo":
        dump_path = args.activations or newest_dump()
    else:
        dump_path = tmp / "synthetic-dump"
        # 1/(1 - heldout) more rows than trained on, so one epoch of the train split is the budget
        n_rows = int(case["train_rows"] / (1 - case["heldout_fraction"]) * 1.02)
        write_synthetic_dump(dump_path, n_rows, d_in=case["d_in"], seed=args.data_seed)
    dump = ActivationDump.open(dump_path, case["heldout_fraction"])
    bs = case["batch_size"]
    if name == "synthetic":
        n_train = sum(dump.read_row_group(rg, MODALITIES, "train").num_rows for rg in dump.row_groups)
        case["steps"] = min(case["train_rows"], n_train) // bs
    stream = iter(ShuffledBatches(dump, MODALITIES, bs, seed=0))
    train = np.concatenate([next(stream).float().numpy() for _ in range(case["steps"])])
    scale_batches = TrainConfig.model_fields["scale_batches"].default
    probe_stream = iter(ShuffledBatches(dump, MODALITIES, bs, seed=1))
    probe = np.concatenate([next(probe_stream).float().numpy() for _ in range(min(scale_batches, case["steps"]))])
    scale = estimate_input_scale([torch.from_numpy(probe)])
    val, test = [], []
    for x, table in iter_rows(dump, MODALITIES, "heldout", columns=("sample_id",)):
        ids = table.column("sample_id").to_pylist()
        pick = np.array([is_heldout("bench-validation:" + s, 0.5) for s in ids])
        val.append(x.float().numpy()[pick])
        test.append(x.float().numpy()[~pick])
    paths = {"train": tmp / f"{name}-train.npy"}
    np.save(paths["train"], train.astype(np.float32, copy=False))
    return {"name": name, **case, "dump": dump_path, "d_in": dump.d_in, "train": train, "probe": probe, "paths": paths,
            "validation": np.concatenate(val), "test": np.concatenate(test), "input_scale": scale}


def newest_dump() -> Path:
    """The demo dump ``make run`` left in the artifact store."""
    dumps = sorted((ROOT / "data/artifacts/dump").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise SystemExit("no demo dump: run `make run` first, or pass --activations DIR")
    return dumps[-1].parent


class _MemoryBatches:
    """Stands in for saev's ShuffledBatches: yields rows of an exported array, batch by batch."""

    def __init__(self, rows: np.ndarray, batch_size: int):
        self.rows, self.batch_size, self.bad_files, self.i = rows, batch_size, set(), 0

    def state(self) -> dict:
        return {"position": {"epoch": 0, "chunk": 0, "batch": self.i}, "bad_files": []}

    def __iter__(self):
        while (self.i + 1) * self.batch_size <= len(self.rows):
            b = torch.from_numpy(self.rows[self.i * self.batch_size:(self.i + 1) * self.batch_size])
            self.i += 1
            yield b
        raise RuntimeError("the exported stream ran out of batches")


@contextlib.contextmanager
def saev_reads_memory(train: np.ndarray, probe: np.ndarray, seed: int):
    """Within the block, train_sae's main stream (``seed``) yields ``train`` and its input-scale
    probe (``seed + 1``) yields ``probe``. Only the bench's own module reference is swapped."""
    real = saev_train.ShuffledBatches

    def factory(dump, modalities, batch_size, seed=0, **kw):
        return _MemoryBatches(train if seed == main_seed else probe, batch_size)

    main_seed = seed
    saev_train.ShuffledBatches = factory
    try:
        yield
    finally:
        saev_train.ShuffledBatches = real


# ---- the shared metric ---------------------------------------------------------------------


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
    return {"fvu": sq_err / total_var, "l0": active / len(xt), "dead_fraction": 1 - fired.double().mean().item()}


# ---- the libraries -------------------------------------------------------------------------


class Worker:
    """A peer library's venv python running its ``_<lib>_train.py``: one JSON job/reply per line."""

    def __init__(self, python: str, script: str, threads: int):
        self.proc = subprocess.Popen([python, str(ROOT / "bench" / script), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a bench worker exited (status {self.proc.wait()}); see its stderr above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"bench worker: {reply.get('error')}")
        return reply

    def train(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def saev_optimizer(variant: str) -> str:
    """``saev`` and ``saev-noaux`` train with saev's default optimizer, ``saev-<name>`` with that one."""
    name = variant.split("-", 1)[1] if "-" in variant else "noaux"
    return TrainConfig.model_fields["optimizer"].default if name == "noaux" else name


def saev_config(args, arch: str, case: dict, out: Path, steps: int, lr: float | None, seed: int, optimizer: str,
                noaux: bool = False) -> TrainConfig:
    own = ({"k": case["k"], **({"aux_coefficient": 0.0} if noaux else {})} if arch == "topk"
           else {"l1_coefficient": args.l1_coefficient})
    return TrainConfig(
        activations=str(case["dump"]), out=str(out), architecture=arch, d_sae=case["d_sae"], optimizer=optimizer, **own,
        batch_size=case["batch_size"], total_tokens=steps * case["batch_size"],
        lr=lr, heldout_fraction=case["heldout_fraction"], device=args.device,
        seed=seed, progress=False, eval_rows=0, checkpoint_every=10**9, scale_batches=len(case["probe"]) // case["batch_size"],
    )


def default_lr_of(variant: str, arch: str, case: dict) -> float:
    """Each library's own default for this size (saev: its rule; the peers: their trainers')."""
    d_sae = case["d_sae"]
    if variant.startswith("saev"):
        return default_lr(saev_optimizer(variant), arch, d_sae, case["batch_size"], case["steps"] * case["batch_size"])
    if variant == "sparsify-adam":
        return 2e-4 / (d_sae / 2**14) ** 0.5
    if variant == "sparsify-signum":
        return 5e-3 / (d_sae / 2**14) ** 0.5
    return 3e-4  # SAELens's SAETrainerConfig / LanguageModelSAERunnerConfig default


def train_variant(variant: str, arch: str, case: dict, args, workers: dict, lr: float, steps: int, seed: int, out: Path) -> dict:
    """Train one SAE; returns throughput and the saved SAE's directory."""
    bs = case["batch_size"]
    if variant.startswith("saev"):
        cfg = saev_config(args, arch, case, out, steps, lr, seed, saev_optimizer(variant), noaux=variant == "saev-noaux")
        with saev_reads_memory(case["train"], case["probe"], seed):
            manifest = train_sae(cfg, overwrite=True)
        s = manifest["sae_config"]["input_scale"]
        if abs(s - case["input_scale"]) > 1e-6 * case["input_scale"]:
            raise RuntimeError(f"saev estimated input scale {s}, the bench {case['input_scale']}: the runs would not match")
        return {"tokens_per_s": manifest["tokens_per_s"], "sae_dir": out / "sae"}
    if variant.startswith("sparsify"):
        job = {"train_npy": str(case["paths"]["train"]), "steps": steps, "batch_size": bs, "d_sae": case["d_sae"], "k": case["k"],
               "optimizer": variant.split("-")[1], "lr": lr, "lr_warmup_steps": min(1000, steps // 10), "auxk_alpha": 0.0,
               "dead_feature_threshold": 10_000_000, "input_scale": case["input_scale"], "device": args.device,
               "seed": seed, "out": str(out)}
        r = workers["sparsify"].train(job)
    else:
        total = steps * bs
        dead_tokens = max(bs, min(10_000_000, total // 10))
        job = {"arch": "topk" if arch == "topk" else "standard", "train_npy": str(case["paths"]["train"]), "steps": steps,
               "batch_size": bs, "d_sae": case["d_sae"], "k": case["k"] if arch == "topk" else None, "lr": lr,
               "betas": [0.9, 0.999], "lr_decay_steps": round(0.2 * steps), "l1_coefficient": args.l1_coefficient,
               "l1_warm_up_steps": round(0.05 * steps), "aux_coefficient": 1 / 32,
               "dead_feature_window": max(1, dead_tokens // bs), "input_scale": case["input_scale"],
               "apply_b_dec_to_input": arch == "topk", "decoder_init_norm": 1.0 if arch == "topk" else 0.1,
               "device": args.device, "seed": seed, "out": str(out)}
        r = workers["saelens"].train(job)
    return {"tokens_per_s": r["tokens_per_s"], "sae_dir": out}


# ---- the three phases ----------------------------------------------------------------------


def sweep(variants, arch, case, args, workers, tmp) -> dict:
    """lr per variant by validation FVU (seed 0, the full budget).

    With ``--lr-mults`` those factors on the default are tried. Otherwise the search walks: the
    default, then x2 and x0.5, then on in factors of 2 in the better direction while validation
    FVU keeps falling (at most ``--max-sweep`` runs), so a default far from its optimum is still
    found at 2x resolution.
    """
    out = {}
    for v in variants:
        base = default_lr_of(v, arch, case)
        tried: dict[float, dict] = {}

        def trial(m: float) -> float:
            if m not in tried:
                lr = base * m
                r = train_variant(v, arch, case, args, workers, lr, case["steps"], 0, tmp / f"sweep-{case['name']}-{v}-{m}")
                q = heldout_metrics(Path(r["sae_dir"]), case["validation"])
                tried[m] = {"lr": lr, "mult": m, "validation_fvu": round(q["fvu"], 5), "l0": round(q["l0"], 2)}
                log(f"{case['name']} sweep {v:16s} lr {lr:.3g} (x{m:g}): validation FVU {q['fvu']:.4f}, L0 {q['l0']:.1f}")
                shutil.rmtree(r["sae_dir"], ignore_errors=True)
            return tried[m]["validation_fvu"]

        if args.lr_mults:
            for m in args.lr_mults:
                trial(m)
        else:
            start, budget = args.start_mult.get(v, 1.0), args.max_sweep_of.get(v, args.max_sweep)
            trial(start)
            up = trial(2 * start) if budget > 1 else float("inf")
            down = trial(start / 2) if budget > 2 else float("inf")
            factor = 2.0 if up < down else 0.5
            m = start * factor
            while len(tried) < budget and trial(m * factor) < trial(m):
                m *= factor
        best = min(tried.values(), key=lambda t: t["validation_fvu"])
        out[v] = {"default_lr": base, "tried": sorted(tried.values(), key=lambda t: t["mult"]), "best_lr": best["lr"], "best_mult": best["mult"]}
    return out


def timed(variants, arch, case, args, workers, lrs, tmp) -> dict:
    runs = {v: [] for v in variants}
    for v in variants:  # warm-up: first-call costs (allocator, kernels) out of the timing
        train_variant(v, arch, case, args, workers, lrs[v], 5, 0, tmp / f"warm-{v}")
    for i, seed in enumerate(range(args.seeds)):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for v in order:
            r = train_variant(v, arch, case, args, workers, lrs[v], case["steps"], seed, tmp / f"timed-{case['name']}-{v}-{seed}")
            q = heldout_metrics(Path(r["sae_dir"]), case["test"])
            runs[v].append({"seed": seed, "tokens_per_s": r["tokens_per_s"], **q})
            log(f"{case['name']} seed {seed} {v:16s} {r['tokens_per_s']:9.0f} tok/s, test FVU {q['fvu']:.4f}, L0 {q['l0']:.1f}")
    out = {}
    for v, rs in runs.items():
        tps, fvu = [r["tokens_per_s"] for r in rs], [r["fvu"] for r in rs]
        out[v] = {"lr": lrs[v], "tokens_per_s": statistics.median(tps), "tokens_per_s_range": [min(tps), max(tps)],
                  "test_fvu": statistics.median(fvu), "test_fvu_range": [min(fvu), max(fvu)],
                  "l0": statistics.median(r["l0"] for r in rs), "dead_fraction": statistics.median(r["dead_fraction"] for r in rs),
                  "runs": rs}
    return out


def curve(variants, arch, case, args, workers, lrs, tmp, full: dict) -> dict:
    out = {}
    for v in variants:
        points = []
        for frac in (0.25, 0.5):
            steps = max(5, int(case["steps"] * frac))
            r = train_variant(v, arch, case, args, workers, lrs[v], steps, 0, tmp / f"curve-{case['name']}-{v}-{frac}")
            points.append({"tokens": steps * case["batch_size"], "test_fvu": round(heldout_metrics(Path(r["sae_dir"]), case["test"])["fvu"], 5)})
        seed0 = next(r for r in full[v]["runs"] if r["seed"] == 0)
        points.append({"tokens": case["steps"] * case["batch_size"], "test_fvu": round(seed0["fvu"], 5)})
        out[v] = points
        log(f"{case['name']} FVU vs tokens {v:16s} " + ", ".join(f"{p['tokens']}: {p['test_fvu']:.4f}" for p in points))
    return out


# ---- scaling -------------------------------------------------------------------------------


def matmul_gflops(n: int = 1024, d: int = 512, m: int = 8192, reps: int = 5) -> float:
    """This machine's fp32 matmul throughput at an SAE-shaped product, on the bench's threads."""
    a, b = torch.randn(n, d), torch.randn(d, m)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n * d * m * reps / (time.perf_counter() - t0) / 1e9


def scaling(args, tmp: Path) -> list[dict]:
    """saev TopK at d_in 512, d_sae 1k..65k: tok/s, peak RSS, and the matmul-bound ceiling.

    The ceiling counts the one dense product a TopK step cannot avoid (the encoder's ranking
    matmul, 2*B*d_in*d_sae FLOPs) at the measured matmul rate: tok/s <= rate / (2*d_in*d_sae).
    """
    rows = 40 * 1024
    dump = tmp / "scaling-dump"
    write_synthetic_dump(dump, int(rows / 0.99 * 1.05), d_in=512, seed=args.data_seed)
    gflops = matmul_gflops()
    out = []
    for d_sae in args.scaling_sizes:
        steps = 20 if d_sae <= 16384 else 8
        cfg = TrainConfig(activations=str(dump), out=str(tmp / f"scale-{d_sae}"), architecture="topk", d_sae=d_sae, k=32,
                          batch_size=1024, total_tokens=steps * 1024, heldout_fraction=0.01, device=args.device,
                          progress=False, eval_rows=0, checkpoint_every=10**9, scale_batches=5)
        code = ("import json,sys,resource; sys.path.insert(0, %r); from saev_core.sae.train import TrainConfig, train_sae; "
                "import torch; torch.set_num_threads(%d); m = train_sae(TrainConfig.model_validate_json(sys.argv[1]), overwrite=True); "
                "print(json.dumps({'tokens_per_s': m['tokens_per_s'], 'peak_rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
                ) % (str(ROOT), max(args.threads, 1))
        res = subprocess.run([sys.executable, "-c", code, cfg.model_dump_json()], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        bound = gflops * 1e9 / (2 * 512 * d_sae)
        out.append({"d_sae": d_sae, "steps": steps, "tokens_per_s": round(r["tokens_per_s"]), "peak_rss_mib": round(r["peak_rss_kb"] / 1024),
                    "matmul_bound_tokens_per_s": round(bound), "fraction_of_bound": round(r["tokens_per_s"] / bound, 3)})
        log(f"scaling d_sae {d_sae}: {out[-1]}")
        shutil.rmtree(tmp / f"scale-{d_sae}", ignore_errors=True)
    return [{"matmul_gflops": round(gflops, 1)}, *out]


# ---- report --------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = []
    for name, r in results.items():
        t = r["timed"]
        lines += [f"### {name}", "", "| variant | best lr | tok/s (median, range) | test FVU (median, range) | L0 | saev speed-up |",
                  "|---|---:|---:|---:|---:|---:|"]
        for v, x in t.items():
            ratio = t["saev"]["tokens_per_s"] / x["tokens_per_s"] if "saev" in t else float("nan")
            lines.append(f"| {v} | {x['lr']:.3g} | {x['tokens_per_s']:,.0f} ({x['tokens_per_s_range'][0]:,.0f}-{x['tokens_per_s_range'][1]:,.0f}) | "
                         f"{x['test_fvu']:.4f} ({x['test_fvu_range'][0]:.4f}-{x['test_fvu_range'][1]:.4f}) | {x['l0']:.1f} | {ratio:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def machine_info(args, workers: dict) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "threads": args.threads, "device": args.device,
            "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    with contextlib.suppress(OSError):
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                                 if line.startswith("model name"))
    for name, w in workers.items():
        info[name] = {k: v for k, v in w.info.items() if k != "ok"}
    return info


def _pairs(cast):
    def parse(text: str) -> dict:
        return {k: cast(v) for k, v in (item.split("=", 1) for item in text.split(",") if item)}
    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="demo,synthetic", help="comma list of demo, synthetic")
    p.add_argument("--arch", default="topk", choices=["topk", "relu"])
    p.add_argument("--activations", type=Path, default=None, help="the demo case's dump (default: the newest in data/artifacts)")
    p.add_argument("--seeds", type=int, default=3, help="timed runs per variant (SAE init seeds 0..N-1)")
    p.add_argument("--lr-mults", type=float, nargs="+", default=None, help="factors on each default lr to try (default: a walk in factors of 2)")
    p.add_argument("--max-sweep", type=int, default=6, help="most lr values the walk tries per variant")
    p.add_argument("--start-mult", type=_pairs(float), default={}, metavar="VARIANT=M,...",
                   help="start a variant's walk at M times its default (e.g. from another case's sweep)")
    p.add_argument("--max-sweep-of", type=_pairs(int), default={}, metavar="VARIANT=N,...", help="--max-sweep for one variant")
    p.add_argument("--no-curve", action="store_true", help="skip the FVU-vs-tokens runs")
    p.add_argument("--variants", default="saev,sparsify-adam,sparsify-signum,saelens")
    p.add_argument("--l1-coefficient", type=float, default=5.0, help="relu sparsity coefficient (paper: 5)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for every library (0: torch's default)")
    p.add_argument("--saelens-python", default="/tmp/saelens-venv/bin/python")
    p.add_argument("--sparsify-python", default="/tmp/sparsify-venv/bin/python")
    p.add_argument("--scaling", action="store_true", help="only the saev d_sae scaling sweep")
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--batch-size", type=int, default=None, help="override every case's batch size (same token budget)")
    p.add_argument("--sweep-only", action="store_true", help="only the lr sweep on the validation split (to choose defaults)")
    p.add_argument("--quick", action="store_true", help="a tenth of each case's budget: checks the protocol, not for figures")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train-"))
    t_start = time.perf_counter()
    if args.scaling:
        try:
            report = {"benchmark": "saev SAE training scaling", "machine": machine_info(args, {}), "scaling": scaling(args, tmp)}
            print(json.dumps(report, indent=2))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.arch == "relu":
        variants = [v for v in variants if not v.startswith("sparsify")]
    workers, skipped = {}, []
    for lib, python, script in (("saelens", args.saelens_python, "_saelens_train.py"), ("sparsify", args.sparsify_python, "_sparsify_train.py")):
        if not any(v.startswith(lib) for v in variants):
            continue
        if Path(python).exists():
            log(f"starting the {lib} worker")
            workers[lib] = Worker(python, script, args.threads)
        else:
            skipped.append(f"{lib}: {python} not found (see the docstring for the venv)")
            variants = [v for v in variants if not v.startswith(lib)]
            log(skipped[-1])
    results = {}
    try:
        for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
            log(f"case {name}: exporting the batches")
            case = prepare_case(name, args, tmp)
            log(f"case {name}: d_in {case['d_in']}, d_sae {case['d_sae']}, {case['steps']} steps of {case['batch_size']}, "
                f"{len(case['validation'])} validation / {len(case['test'])} test rows, s = {case['input_scale']:.5g}")
            sw = sweep(variants, args.arch, case, args, workers, tmp)
            if args.sweep_only:
                results[name] = {"sweep": sw}
                continue
            lrs = {v: sw[v]["best_lr"] for v in variants}
            t = timed(variants, args.arch, case, args, workers, lrs, tmp)
            results[name] = {
                "settings": {k: case[k] for k in ("d_in", "d_sae", "k", "batch_size", "steps", "heldout_fraction", "input_scale")}
                | {"tokens": case["steps"] * case["batch_size"], "validation_rows": len(case["validation"]), "test_rows": len(case["test"])},
                "sweep": sw, "timed": t,
                "fvu_vs_tokens": None if args.no_curve else curve(variants, args.arch, case, args, workers, lrs, tmp, t),
            }
            for v in variants:
                if v != "saev":
                    results[name][f"speedup_saev_over_{v}"] = t["saev"]["tokens_per_s"] / t[v]["tokens_per_s"]
        report = {"benchmark": f"saev vs sparsify vs SAELens SAE training ({args.arch})", "machine": machine_info(args, workers)
                  | {"loadavg_end": [round(v, 2) for v in os.getloadavg()]}, "arch": args.arch, "results": results,
                  "skipped": skipped, "bench_wall_s": round(time.perf_counter() - t_start, 1)}
        print(json.dumps(report, indent=2, default=str))
        if not args.sweep_only:
            print(markdown(results), file=sys.stderr)
    finally:
        for w in workers.values():
            w.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 2 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())

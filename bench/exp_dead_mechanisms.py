"""Why the demo SAE's latents die: training-loop changes that saev does not ship, tried on the
validation world (issue 30). Each is a patch of the training loop for this process only.

    python bench/exp_dead_mechanisms.py --mode nobenc --lr-mult 1 0.25
    python bench/exp_dead_mechanisms.py --mode resample-input resample-resid --lr-mult 1 0.25 --set aux_coefficient=0.03125
    python bench/exp_dead_mechanisms.py --mode adam-reset plain --lr-mult 0.125 --set aux_coefficient=0.03125 --sae-seeds 0 1
    python bench/exp_dead_mechanisms.py --mode gap

Modes:
- ``plain``: the loop as it is (the baseline of the others, with the same ``--set``);
- ``nobenc``: b_enc frozen at 0 (OpenAI's TopK has no encoder bias);
- ``resample-input`` / ``resample-resid``: every 100 steps up to 70% of training, each dead latent
  is re-initialised on a token drawn in proportion to its squared error (Anthropic's resampling):
  decoder = the token's residual direction, encoder = the token's input (or residual) direction
  at the mean live encoder norm, b_enc = 0, Adam moments zeroed;
- ``adam-reset``: when a latent turns dead, its Adam moments are zeroed, so AuxK's gradient is not
  divided by the second moment of the gradients it had while alive;
- ``gap``: no training; for the SAE runs named by ``--runs`` (directories of ``bench/dead_latents.py``
  in the world's run folder), how far below each token's k-th largest pre-activation the dead
  latents stay.

lr = m x the rule's lr at the demo SAE's size (``--lr-mult``). Dead fractions as in
``bench/dead_latents.py`` (training's window; the 74k-token probe dump).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worlds import dumped, probe_dump  # noqa: E402
from dead_latents import never_fired, parse_variant, train_variant  # noqa: E402

import saev_core.sae.train as T  # noqa: E402
from saev_core.activations.shards import ActivationDump, iter_rows  # noqa: E402
from saev_core.demo.defaults import DEMO_SAE  # noqa: E402
from saev_core.sae.optim import make_optimizer  # noqa: E402
from saev_core.sae.train import load_training_state  # noqa: E402


def zero_moments(opt: torch.optim.Optimizer, sae, latents: torch.Tensor) -> None:
    for p, sl in ((sae.W_dec, (latents,)), (sae.W_enc, (slice(None), latents)), (sae.b_enc, (latents,))):
        for key in ("exp_avg", "exp_avg_sq"):
            if p in opt.state and key in opt.state[p]:
                opt.state[p][key][sl] = 0.0


@torch.no_grad()
def resample(run, x: torch.Tensor, x_hat: torch.Tensor, step: int, encoder: str) -> None:
    sae = run.sae
    dead = sae.dead_mask().nonzero().squeeze(1)
    if not dead.numel():
        return
    sx = sae._scaled(x)
    err = sx - x_hat * sae.cfg.input_scale
    weight = err.pow(2).sum(1)
    g = torch.Generator().manual_seed(step)
    pick = torch.multinomial(weight / weight.sum(), dead.numel(), replacement=dead.numel() > len(weight), generator=g)
    enc_norm = sae.W_enc[:, ~sae.dead_mask()].norm(dim=0).mean()
    d = torch.nn.functional.normalize(err[pick], dim=1)
    e = torch.nn.functional.normalize((sx - sae.b_dec)[pick] if encoder == "input" else err[pick], dim=1)
    sae.W_dec[dead] = d
    sae.W_enc[:, dead] = (e * enc_norm).T
    sae.b_enc[dead] = 0.0
    sae.tokens_since_fired[dead] = 0
    zero_moments(run.opt, sae, dead)


def patch(mode: str) -> None:
    step = T._Run.step
    init = T._Run.__init__

    def patched_init(self, cfg, out, sae, *a, **k):
        if mode == "nobenc":
            sae.b_enc.requires_grad_(False)
        init(self, cfg, out, sae, *a, **k)

    def patched_step(self, x, n, total):
        before = self.sae.dead_mask().clone()
        res = step(self, x, n, total)
        if mode.startswith("resample") and (n + 1) % 100 == 0 and n + 1 <= 0.7 * total:
            resample(self, x, res.x_hat, n, mode.split("-")[1])
        if mode == "adam-reset":
            zero_moments(self.opt, self.sae, (self.sae.dead_mask() & ~before).nonzero().squeeze(1))
        return res

    T._Run.__init__, T._Run.step = patched_init, patched_step
    T.make_optimizer = lambda name, params, lr, betas: make_optimizer(name, [p for p in params if p.requires_grad], lr, betas)


def gap(run: Path, names: list[str]) -> None:
    x = torch.cat([x.float() for x, _ in iter_rows(ActivationDump.open(run / "dump"), ("image", "text"), "all")])
    for name in names:
        ckpt = sorted((run / name / "checkpoints").glob("step-*"))[-1]
        sae, _, _ = load_training_state(ckpt, torch.device("cpu"))
        dead = sae.dead_mask()
        with torch.no_grad():
            pre = sae.pre(sae._scaled(x))
            kth = pre.topk(sae.cfg.k, dim=1).values[:, -1]
            best = pre[:, dead].max(0).values
            below = (pre[:, dead] - kth[:, None]).max(0).values
        print(json.dumps({"sae": name, "dead": int(dead.sum()), "median_kth_pre": kth.median().item(),
                          "dead_median_max_pre": best.median().item(), "dead_never_positive": (best <= 0).float().mean().item(),
                          "dead_median_best_gap_to_kth": below.median().item()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", nargs="+", default=["plain"],
                    choices=["plain", "nobenc", "resample-input", "resample-resid", "adam-reset", "gap"])
    ap.add_argument("--world", type=int, default=1000)
    ap.add_argument("--sae-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lr-mult", type=float, nargs="+", default=[1.0])
    ap.add_argument("--set", default="", help="train config fields, field=value,...")
    ap.add_argument("--out", default="data/bench/dead")
    ap.add_argument("--runs", nargs="+", default=["sae-s0-default"], help="gap: SAE run directories in the world's run folder")
    args = ap.parse_args()
    _, run = dumped(args.world, Path(args.out))
    if args.mode == ["gap"]:
        return gap(run, args.runs)
    probe = probe_dump(args.world, Path(args.out))
    _, fields = parse_variant(args.set)
    for mode in args.mode:
        patch(mode)
        for mult in args.lr_mult:
            for seed in args.sae_seeds:
                out = run / f"mech-{mode}-x{mult:g}-s{seed}"
                m = train_variant({**DEMO_SAE, "activations": str(run / "dump")}, {**fields, "lr_mult": mult}, out, seed)
                print(json.dumps({"mode": mode, "lr_mult": mult, "sae_seed": seed, **fields, "lr": m["lr"],
                                  "dead_window": m["metrics"]["dead_fraction_window"], "dead_probe": never_fired(out, probe)[0],
                                  "fvu": m["heldout"]["all"]["fvu"]}), flush=True)
        T._Run.step, T._Run.__init__ = ORIGINAL
        T.make_optimizer = make_optimizer


ORIGINAL = (T._Run.step, T._Run.__init__)

if __name__ == "__main__":
    main()

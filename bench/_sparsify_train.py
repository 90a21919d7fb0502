"""sparsify side of ``bench/bench_train.py``: a worker that trains TopK SAEs with the real
``eai-sparsify`` package's ``SparseCoder``. It runs in sparsify's own venv and imports nothing
from saev.

Usage and protocol as ``_saelens_train.py``: ``python _sparsify_train.py [THREADS]``, one JSON job
per line on stdin, one JSON reply per line on stdout. A job::

    {"train_npy": path, "steps": int, "batch_size": int, "d_sae": int, "k": int,
     "optimizer": "adam" | "signum", "lr": float, "lr_warmup_steps": int, "auxk_alpha": float,
     "dead_feature_threshold": int, "input_scale": float, "device": str, "seed": int,
     "out": path | null}

The loop is ``sparsify.Trainer.fit``'s for one autoencoding SAE on pre-computed batches (its
``fit`` takes a language model and a token dataset, which the bench replaces by the exported
activations): b_dec = mean of the first batch, decoder rows renormalised before each step, loss
= FVU + auxk_alpha * AuxK, gradient parallel to the decoder rows removed, then the optimizer:
Adam with linear warm-up and decay (``get_linear_schedule_with_warmup``), or sparsify's default
``ScheduleFreeWrapper(SignSGD, momentum=0.95)`` (put in eval mode at the end, as its checkpoints
are). Inputs are multiplied by the bench's input scale s, like saev's and SAELens's; the saved
SAE has s folded in, in SAELens's format (``architecture: topk``), for the bench's shared metric.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

from _worker import serve  # noqa: E402  (first: it moves stdout to stderr)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from importlib.metadata import version  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from schedulefree import ScheduleFreeWrapper  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402
from sparsify.sign_sgd import SignSGD  # noqa: E402
from transformers import get_linear_schedule_with_warmup  # noqa: E402


def run(job: dict) -> dict:
    train = np.load(job["train_npy"])
    steps, bs, s = job["steps"], job["batch_size"], job["input_scale"]
    if train.shape[0] < steps * bs:
        raise ValueError(f"{job['train_npy']} holds {train.shape[0]} rows, fewer than steps*batch_size = {steps * bs}")
    d_in, device = int(train.shape[1]), job["device"]
    torch.manual_seed(job["seed"])
    sae = SparseCoder(d_in, SparseCoderConfig(k=job["k"], num_latents=job["d_sae"]), device=device, dtype=torch.float32)
    schedulers = []
    if job["optimizer"] == "adam":
        opt = torch.optim.Adam(sae.parameters(), lr=job["lr"])
        schedulers = [get_linear_schedule_with_warmup(opt, job["lr_warmup_steps"], steps)]
    else:
        opt = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=job["lr"]), momentum=0.95)
        opt.train()
    since_fired = torch.zeros(job["d_sae"], dtype=torch.long, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        x = torch.from_numpy(train[i * bs:(i + 1) * bs]).to(device) * s
        if i == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead = since_fired > job["dead_feature_threshold"] if job["auxk_alpha"] > 0 else None
        out = sae(x, dead_mask=dead)
        loss = out.fvu + job["auxk_alpha"] * out.auxk_loss
        loss.backward()
        fired = torch.zeros(job["d_sae"], dtype=torch.bool, device=device)
        fired[out.latent_indices.flatten()] = True
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for sched in schedulers:
            sched.step()
        since_fired += bs
        since_fired[fired] = 0
    if isinstance(opt, ScheduleFreeWrapper):
        opt.eval()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if job.get("out"):
        os.makedirs(job["out"], exist_ok=True)
        w = {"W_enc": (sae.encoder.weight.data.T * s).contiguous(), "b_enc": sae.encoder.bias.data.clone(),
             "W_dec": (sae.W_dec.data / s).contiguous(), "b_dec": sae.b_dec.data / s}
        save_file({k: v.float().cpu() for k, v in w.items()}, os.path.join(job["out"], "sae_weights.safetensors"))
        with open(os.path.join(job["out"], "cfg.json"), "w") as f:
            json.dump({"architecture": "topk", "d_in": d_in, "d_sae": job["d_sae"], "k": job["k"],
                       "apply_b_dec_to_input": True, "normalize_activations": "none"}, f)
    return {"ok": True, "seconds": seconds, "tokens": steps * bs, "tokens_per_s": steps * bs / seconds}


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if threads > 0:
        torch.set_num_threads(threads)
    serve(run, {"sparsify_version": version("eai-sparsify"), "torch_version": torch.__version__,
                "torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()

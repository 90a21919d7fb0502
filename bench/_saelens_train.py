"""SAELens side of ``bench/bench_train.py``: a worker that trains SAEs with the real ``sae-lens``
package. It runs inside the SAELens venv (not the project's), so it imports nothing from saev.

Usage: ``python _saelens_train.py [THREADS]`` (torch CPU threads; 0 or absent: torch's default).
Protocol: one JSON job per line on stdin, one JSON reply per line on stdout (everything else
SAELens or tqdm prints goes to stderr). The process stays up between jobs, so ``sae_lens`` is
imported once and runs of saev and SAELens can be interleaved cheaply. A job::

    {"arch": "topk" | "standard", "train_npy": path, "steps": int, "batch_size": int,
     "d_sae": int, "k": int | null, "lr": float, "betas": [b1, b2], "lr_decay_steps": int,
     "l1_coefficient": float, "l1_warm_up_steps": int, "aux_coefficient": float,
     "dead_feature_window": int, "input_scale": float, "apply_b_dec_to_input": bool,
     "decoder_init_norm": float, "device": str, "seed": int, "out": path | null}

The reply holds the seconds spent in ``SAETrainer.fit()`` (the training loop; the scaling factor
is given, so no norm-estimation pass runs) and, if ``out`` is set, the trained SAE saved there in
SAELens's inference format (scale folded in, ``cfg.json`` + ``sae_weights.safetensors``).
"""

from __future__ import annotations

import os
import sys
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore")

from _worker import serve  # noqa: E402  (first: it moves stdout to stderr)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import sae_lens  # noqa: E402
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402


def batches(train: np.ndarray, batch_size: int, steps: int):
    """The exported token stream, batch by batch, in saev's order (zero-copy views, as saev gets them)."""
    for i in range(steps):
        yield torch.from_numpy(train[i * batch_size:(i + 1) * batch_size])


def build_sae(job: dict):
    common = dict(d_in=job["d_in"], d_sae=job["d_sae"], dtype="float32", device=job["device"],
                  apply_b_dec_to_input=job["apply_b_dec_to_input"],
                  normalize_activations="expected_average_only_in",
                  decoder_init_norm=job["decoder_init_norm"])
    torch.manual_seed(job["seed"])
    if job["arch"] == "topk":
        cfg = TopKTrainingSAEConfig(k=job["k"], aux_loss_coefficient=job["aux_coefficient"],
                                    rescale_acts_by_decoder_norm=True, **common)
        return TopKTrainingSAE(cfg)
    if job["arch"] == "standard":
        cfg = StandardTrainingSAEConfig(l1_coefficient=job["l1_coefficient"], l1_warm_up_steps=job["l1_warm_up_steps"],
                                        lp_norm=1.0, **common)
        return StandardTrainingSAE(cfg)
    raise ValueError(f"unknown arch {job['arch']!r}")


def run(job: dict) -> dict:
    train = np.load(job["train_npy"])  # fully in memory before timing, like the bench's copy for saev
    steps, bs = job["steps"], job["batch_size"]
    if train.shape[0] < steps * bs:
        raise ValueError(f"{job['train_npy']} holds {train.shape[0]} rows, fewer than steps*batch_size = {steps * bs}")
    job["d_in"] = int(train.shape[1])
    sae = build_sae(job)
    tcfg = SAETrainerConfig(
        total_training_samples=steps * bs, train_batch_size_samples=bs, lr=job["lr"], lr_end=job["lr"],
        lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=job["lr_decay_steps"],
        adam_beta1=job["betas"][0], adam_beta2=job["betas"][1], device=job["device"], autocast=False,
        dead_feature_window=job["dead_feature_window"], feature_sampling_window=10 * steps + 1,
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=batches(train, bs, steps), evaluator=None)
    # The same s as saev's (sqrt(d_in) / mean||x||, estimated by the bench): fit() then skips its own
    # estimation pass (which would consume batches) and folds s into the weights at the end.
    trainer.activation_scaler.scaling_factor = job["input_scale"]
    if job["device"].startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.fit()
    if job["device"].startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if job.get("out"):
        trainer.sae.save_inference_model(job["out"])
    return {"ok": True, "seconds": seconds, "tokens": steps * bs, "tokens_per_s": steps * bs / seconds,
            "steps": trainer.n_training_steps}


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if threads > 0:
        torch.set_num_threads(threads)
    serve(run, {"sae_lens_version": sae_lens.__version__, "torch_version": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})


if __name__ == "__main__":
    main()

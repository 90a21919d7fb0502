"""The GPU measurements of ``bench/gpu.sh``: SAE training at d_in 4096 / d_sae 65,536, the dump
on a full-size LLaVA-NeXT-7B against its bare forward, and scoring. One JSON report on stdout.

    python3 bench/bench_gpu.py --out /tmp/gpu            # on one H100/H200 (about 5 minutes)
    python3 bench/bench_gpu.py --small --device cpu      # the same code at toy sizes, to check it

- SAE training: saev's training step (TopK, AuxK, Adam, decoder renorm: what ``saev train`` runs
  per batch) on structured synthetic batches already on the GPU, fp32 weights with TF32 matmuls.
  tok/s, and TFLOP/s counting the encoder's dense ranking matmul (2 * B * d_in * d_sae per step,
  the one dense product a TopK step cannot avoid) plus the sparse products, as a fraction of the
  chip's dense bf16 peak (``--peak-tflops``; 989 for H100/H200 SXM).
- Dump: LLaVA-NeXT-7B (Mistral-7B text + CLIP ViT-L/14-336, any-resolution) built from its config
  with random weights in bf16, saved, and loaded by saev's own ``load_model``; then ``run_dump``
  at layer 16 over synthetic image-question rows, against the bare forward (``model(**inputs)``,
  all 32 blocks and the LM head) on the same batches. Random weights cost what trained ones do.
- Scoring: ``run_scoring`` of that dump with a random-init SAE at d_in 4096 (every scorer).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sae_training(args, device: torch.device) -> dict:
    from saev_core.sae.optim import default_lr, make_optimizer
    from saev_core.sae.model import SAE, SAEConfig

    d_in, d_sae, k, batch = (64, 1024, 8, 256) if args.small else (4096, 65536, 64, 4096)
    steps, warm = (5, 2) if args.small else (40, 5)
    torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator(device=device).manual_seed(0)
    dirs = torch.randn(2 * d_sae, d_in, device=device, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)

    def batch_rows() -> torch.Tensor:
        idx = torch.randint(0, 2 * d_sae, (batch, 32), device=device, generator=g)
        coef = torch.rand(batch, 32, device=device, generator=g) + 0.5
        return torch.einsum("bk,bkd->bd", coef, dirs[idx]) + 0.05 * torch.randn(batch, d_in, device=device, generator=g)

    data = [batch_rows() for _ in range(8)]
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, dead_window=batch * 3,
                    input_scale=float(d_in**0.5 / data[0].norm(dim=1).mean()))
    sae = SAE(cfg, device=device)
    sae.init_b_dec_(data[0])
    sae.train()
    lr = default_lr("adam", "topk", d_sae, batch, (warm + 3 + steps) * batch)
    opt = make_optimizer("adam", sae.parameters(), lr, (0.9, 0.999))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(x):
        res = sae(x)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        sae.remove_parallel_grad_()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.normalize_decoder_()
        return res

    for i in range(warm + 3):  # past the dead window, so AuxK runs in the timed steps
        step(data[i % len(data)])
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        res = step(data[i % len(data)])
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    n_aux = min(cfg.aux_k, int(sae.dead_mask().sum()))
    dense = 2 * batch * d_in * d_sae
    sparse = 2 * batch * (k + n_aux) * d_in * 4  # encoder grad, decoder fwd, decoder grad, values grad
    return {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch, "steps_timed": steps, "lr": lr,
            "dead_latents": int(sae.dead_mask().sum()), "aux_latents_per_token": n_aux,
            "step_ms": round(dt * 1e3, 2), "tokens_per_s": round(batch / dt),
            "dense_tflops": round(dense / dt / 1e12, 1), "total_tflops": round((dense + sparse) / dt / 1e12, 1),
            "fraction_of_bf16_peak": round((dense + sparse) / dt / 1e12 / args.peak_tflops, 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
            "last_fvu": round(res.fvu.item(), 4)}


def build_llava_next(out: Path, small: bool) -> None:
    """LLaVA-NeXT-Mistral-7B's architecture from its config, random weights (bf16), in hub layout."""
    from _families import _llama_tokenizer
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    image, patch = (32, 8) if small else (336, 14)
    pinpoints = [[image, 2 * image], [2 * image, image], [2 * image, 2 * image], [3 * image, image], [image, 3 * image]]
    tok = _llama_tokenizer()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": image}, crop_size={"height": image, "width": image},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token="<image>",
        chat_template="{% for m in messages %}[INST] {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                      "{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% endfor %}",
    )
    text = dict(model_type="mistral", vocab_size=32064 if not small else len(tok), hidden_size=64 if small else 4096,
                intermediate_size=128 if small else 14336, num_hidden_layers=2 if small else 32,
                num_attention_heads=4 if small else 32, num_key_value_heads=4 if small else 8, max_position_embeddings=4096,
                sliding_window=None, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(model_type="clip_vision_model", hidden_size=32 if small else 1024, intermediate_size=64 if small else 4096,
                  num_hidden_layers=2 if small else 24, num_attention_heads=2 if small else 16, image_size=image,
                  patch_size=patch, projection_dim=32 if small else 768)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, image_seq_length=(image // patch) ** 2,
                             vision_feature_select_strategy="default", vision_feature_layer=-2)
    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlavaNextForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model


def synthetic_rows(path: Path, n: int, small: bool) -> None:
    """An SFT-format Parquet of n image-question-answer rows (random images of LLaVA-NeXT-like sizes)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    words = ["what", "is", "in", "the", "image", "a", "cat", "dog", "on", "red", "blue", "table"]
    side = 48 if small else 672
    rows = {"image": [], "question": [], "answer": []}
    for _ in range(n):
        img = Image.fromarray(rng.integers(0, 255, (side, side * 3 // 4 if not small else side, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        rows["image"].append({"bytes": buf.getvalue(), "path": None})
        rows["question"].append(" ".join(rng.choice(words, 24)))
        rows["answer"].append(" ".join(rng.choice(words, 24)))
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    ds.to_parquet(str(path))


def dump_and_score(args, device: torch.device, tmp: Path) -> dict:
    from saev_core.sae.checkpoint import save_sae
    from saev_core.activations.data import DatasetSpec, Sample, iter_samples, open_dataset
    from saev_core.activations.dump import DumpConfig, encode_samples, run_dump
    from saev_core.activations.inputs import to_model
    from saev_core.activations.modeling import load_model
    from saev_core.sae.model import SAE, SAEConfig
    from saev_core.scoring.run import ScoreConfig, run_scoring

    n, batch, layer = (16, 4, 1) if args.small else (args.dump_samples, 16, 16)
    t0 = time.perf_counter()
    build_llava_next(tmp / "model", args.small)
    log(f"built and saved the model in {time.perf_counter() - t0:.0f} s")
    synthetic_rows(tmp / "rows.parquet", n, args.small)
    spec = DatasetSpec(path=str(tmp / "rows.parquet"), format="sft")
    t0 = time.perf_counter()
    bundle = load_model(str(tmp / "model"), device=str(device), dtype="bfloat16" if device.type == "cuda" else "float32")
    load_s = time.perf_counter() - t0
    cfg = DumpConfig(model=str(tmp / "model"), dataset=spec, layer=layer, out=str(tmp / "dump"), batch_size=batch,
                     samples_per_shard=max(batch, n // 2), include_response=True, device=str(device), progress=False)
    run_dump(cfg.model_copy(update={"out": str(tmp / "warm"), "dataset": spec.model_copy(update={"limit": batch})}), bundle=bundle)
    sync(device)
    t0 = time.perf_counter()
    manifest = run_dump(cfg, bundle=bundle)
    sync(device)
    dump_s = time.perf_counter() - t0
    tokens = int(manifest["rows"]["total"])
    # The bare forward: the same samples, batched and encoded the same way, through the whole model.
    samples = [s for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)][:n]
    encoded = [to_model(encode_samples(bundle, samples[i:i + batch], True), bundle.device, bundle.dtype)
               for i in range(0, len(samples), batch)]
    with torch.inference_mode():
        bundle.model(**encoded[0], use_cache=False)
        sync(device)
        t0 = time.perf_counter()
        for inputs in encoded:
            bundle.model(**inputs, use_cache=False)
        sync(device)
    bare_s = time.perf_counter() - t0
    d_model = bundle.d_model
    del bundle
    if device.type == "cuda":
        torch.cuda.empty_cache()
    d_sae = 1024 if args.small else 65536
    sae = SAE(SAEConfig(architecture="topk", d_in=d_model, d_sae=d_sae, k=64 if not args.small else 8))
    save_sae(sae, tmp / "sae")
    t0 = time.perf_counter()
    scored = run_scoring(ScoreConfig(activations=str(tmp / "dump"), sae=str(tmp / "sae"), tables=str(tmp / "tables"), device=str(device),
                                     progress=False))
    sync(device)
    score_s = time.perf_counter() - t0
    return {
        "model": "LLaVA-NeXT-Mistral-7B architecture, random bf16 weights" if not args.small else "toy LLaVA-NeXT",
        "load_seconds": round(load_s, 1), "samples": manifest["n_samples"], "tokens": tokens, "layer": layer, "batch": batch,
        "dump_seconds": round(dump_s, 2), "dump_samples_per_s": round(manifest["n_samples"] / dump_s, 2),
        "dump_tokens_per_s": round(tokens / dump_s), "bare_forward_seconds": round(bare_s, 2),
        "bare_forward_samples_per_s": round(len(samples) / bare_s, 2),
        "dump_over_bare_forward_time": round(dump_s / bare_s, 2),
        "scoring_seconds": round(score_s, 2), "scoring_samples_per_s": round(scored["n_samples"] / score_s, 2),
        "scoring_tokens_per_s": round(tokens / score_s), "scoring_d_sae": d_sae,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="toy sizes (checks the script on a CPU)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the chip's dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--dump-samples", type=int, default=256)
    p.add_argument("--parts", default="sae,dump", help="comma list of sae, dump (dump includes scoring)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    parts = args.parts.split(",")
    if "sae" in parts:
        log("SAE training")
        report["sae_training"] = sae_training(args, device)
        log(json.dumps(report["sae_training"]))
    if "dump" in parts:
        with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
            log("dump and scoring")
            report["dump"] = dump_and_score(args, device, Path(tmp))
            log(json.dumps(report["dump"]))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Activation dump: run the model over a dataset and write the residual stream at one decoder
block to Parquet shards, one row per (sample, token position), padding never included.

Layout of a dump directory::

    config.json                  what was asked (a rerun with another config is refused)
    activations/shard-00000.parquet   sample_id, token_pos, modality, token_id, activation
    samples/shard-00000.parquet       sample_id, row_index, n_tokens, n_image_tokens, n_text_tokens, n_special_tokens
    rejected/shard-00000.parquet      sample_id, row_index, reason
    manifest.json                model, layer, d_model, dtype, rows per modality, fingerprint, version

Shard ``k`` holds dataset rows ``[k * samples_per_shard, (k + 1) * samples_per_shard)`` and is a
pure function of the config, so shards can be computed in any order or in parallel. Each file
is written to a temporary name and renamed; the activations file is renamed last and marks
the shard complete, so a rerun skips complete shards and redoes only the rest.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from saev_core import __version__
from saev_core.activations.shards import FORMAT_VERSION, ActivationWriter, activation_table
from saev_core.activations.background import prefetch
from saev_core.configs import DumpConfig
from saev_core.activations.data import Rejection, Sample, batched, first_rows, iter_samples, open_dataset, resolve_columns
from saev_core.activations.inputs import encode, read_chat_template, render, to_model
from saev_core.io import atomic_path, claim_output_dir, remove_stale_tmp, write_json
from saev_core.activations.modeling import ModelBundle, StopForward, capture_residual, check_layer, load_model

MODALITIES = ("image", "text", "special")
FP16_MAX = 65504.0
TEMPLATE_FILE = "chat_template.jinja"  # the dump's copy of a --chat-template, for the stages that reload the model


@dataclass
class ShardResult:
    index: int
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    n_samples: int = 0
    n_rejected: int = 0
    skipped: bool = False


SAMPLES_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("row_index", pa.int64()), ("n_tokens", pa.int32()),
    ("n_image_tokens", pa.int32()), ("n_text_tokens", pa.int32()), ("n_special_tokens", pa.int32()),
])
REJECTED_SCHEMA = pa.schema([("sample_id", pa.string()), ("row_index", pa.int64()), ("reason", pa.string())])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def prompt_text(processor, sample: Sample, include_response: bool) -> str:
    """The model's own chat template: ``USER: <image> {question} ASSISTANT:`` for LLaVA."""
    return render(processor, sample.question, sample.response if include_response else None)


def encode_samples(bundle: ModelBundle, samples: list[Sample], include_response: bool) -> dict:
    """Processor inputs of one batch of samples (raises where the processor does)."""
    return encode(bundle.processor, [prompt_text(bundle.processor, s, include_response) for s in samples], [s.image for s in samples])


def encode_batch(bundle: ModelBundle, samples: list[Sample], include_response: bool,
                 max_length: int) -> tuple[list[tuple[list[Sample], dict]], list[Rejection]]:
    """Tokenise a batch (right padding) into groups of (samples, inputs): one group, or one per
    sample when the processor fails on the batch. Samples the processor rejects on their own, or
    that exceed ``max_length``, come back as rejections instead of failing the batch."""
    rejected: list[Rejection] = []
    try:
        groups = [(samples, encode_samples(bundle, samples, include_response))]
    except Exception:
        groups = []
        for s in samples:
            try:
                groups.append(([s], encode_samples(bundle, [s], include_response)))
            except Exception as e:
                rejected.append(Rejection(s.sample_id, s.row_index, f"processor failed: {type(e).__name__}: {e}"))
    kept = []
    for group, inputs in groups:
        lengths = inputs["attention_mask"].sum(1).tolist()
        fits = [n <= max_length for n in lengths]
        for s, n, ok in zip(group, lengths, fits):
            if not ok:
                rejected.append(Rejection(s.sample_id, s.row_index, f"prompt has {n} tokens, more than the model's context of {max_length}"))
        if all(fits):
            kept.append((group, inputs))
        elif any(fits):
            group = [s for s, ok in zip(group, fits) if ok]
            kept.append((group, encode_samples(bundle, group, include_response)))
    return kept, rejected


@torch.inference_mode()
def residual(bundle: ModelBundle, inputs, layer: int, stop: bool = True) -> torch.Tensor:
    """Residual stream after block ``layer`` for a processed batch, shape [batch, seq, d_model]."""
    batch = to_model(inputs, bundle.device, bundle.dtype)
    with capture_residual(bundle.layers, layer, stop=stop) as box, contextlib.suppress(StopForward):
        bundle.model(**batch, use_cache=False)
    return box["act"]


def batch_table(bundle: ModelBundle, inputs, acts: torch.Tensor, samples: list[Sample], act_dtype: str) -> tuple[pa.Table, list[dict]]:
    """Rows for every non-padding position, labelled by modality from the token ids."""
    mask = inputs["attention_mask"].bool()
    ids = inputs["input_ids"]
    mask_d = mask.to(acts.device)
    flat = acts[mask_d]
    if act_dtype == "float16" and flat.numel() and float(flat.abs().max()) > FP16_MAX:
        raise ValueError(f"activations exceed the float16 range (max |x| = {float(flat.abs().max()):.4g}); rerun with act_dtype=float32")
    flat = flat.to(getattr(torch, act_dtype)).cpu().numpy()
    tok = ids[mask].numpy().astype(np.int32)
    pos = (mask.cumsum(1) - 1)[mask].numpy().astype(np.int32)
    owner = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask].numpy()
    is_image = tok == bundle.image_token_id
    is_special = np.isin(tok, np.fromiter(bundle.special_ids, dtype=np.int32)) & ~is_image
    modality = np.where(is_image, "image", np.where(is_special, "special", "text"))
    table = activation_table(flat.reshape(len(tok), bundle.d_model), np.asarray([s.sample_id for s in samples], dtype=object)[owner],
                             np.asarray([s.row_index for s in samples], np.int32)[owner], pos, modality, tok)
    stats = []
    for i, s in enumerate(samples):
        sel = owner == i
        stats.append({
            "sample_id": s.sample_id, "row_index": s.row_index, "n_tokens": int(sel.sum()),
            "n_image_tokens": int((is_image & sel).sum()), "n_text_tokens": int((~is_image & ~is_special & sel).sum()),
            "n_special_tokens": int((is_special & sel).sum()),
        })
    return table, stats


@dataclass
class _Prepared:
    n_rows: int
    groups: list[tuple[list[Sample], dict]]  # (samples, processor inputs) per forward pass
    rejected: list[Rejection]


def _prepare(cfg: DumpConfig, bundle: ModelBundle, ds, start: int, stop: int, max_length: int,
             first: dict[str, int]) -> Iterator[_Prepared]:
    """CPU side of a shard: read rows, drop bad ones and duplicates (rows whose sample id first
    occurs at an earlier row of the dataset, ``first``), run the processor."""
    for chunk in batched(iter_samples(ds, cfg.dataset, start, stop), cfg.batch_size):
        rejected, samples = [], []
        for item in chunk:
            if first.get(item.sample_id, item.row_index) < item.row_index:
                rejected.append(Rejection(item.sample_id, item.row_index, f"duplicate of row {first[item.sample_id]}"))
            elif isinstance(item, Rejection):
                rejected.append(item)
            else:
                samples.append(item)
        groups = []
        if samples:
            groups, bad = encode_batch(bundle, samples, cfg.include_response, max_length)
            rejected.extend(bad)
        yield _Prepared(len(chunk), groups, rejected)


def dump_shard(cfg: DumpConfig, bundle: ModelBundle, ds, index: int, layer: int, first: dict[str, int], pbar=None) -> ShardResult:
    """Compute shard ``index`` and write its three files atomically (activations last)."""
    out = Path(cfg.out)
    result = ShardResult(index)
    act_path = out / "activations" / shard_name(index)
    if act_path.exists():
        if not pa.types.is_fixed_size_binary(pq.read_schema(act_path).field("activation").type):
            raise ValueError(f"{out} holds shards of dump format 1 (an older saev); this one writes format {FORMAT_VERSION} and cannot "
                             "add to it: dump to a new directory, or pass overwrite to rewrite it (format-1 dumps still train and score)")
        meta = pq.read_metadata(act_path).metadata or {}
        result.skipped = True
        result.rows = {m: int(meta.get(f"saev.rows.{m}".encode(), 0)) for m in MODALITIES}
        result.n_samples = int(meta.get(b"saev.n_samples", 0))
        result.n_rejected = int(meta.get(b"saev.n_rejected", 0))
        if pbar is not None:
            pbar.update(min(len(ds), (index + 1) * cfg.samples_per_shard) - index * cfg.samples_per_shard)
        return result
    start = index * cfg.samples_per_shard
    stop = min(len(ds), start + cfg.samples_per_shard)
    for part in ("activations", "rejected", "samples"):  # what a killed run of this shard left half-written
        remove_stale_tmp(out / part / shard_name(index))
    rejected: list[Rejection] = []
    sample_stats: list[dict] = []
    with atomic_path(act_path) as tmp_act, ActivationWriter(tmp_act, bundle.d_model, cfg.act_dtype, cfg.compression, cfg.row_group_mb) as writer:
        for prep in prefetch(_prepare(cfg, bundle, ds, start, stop, cfg.max_length or bundle.max_length, first)):
            rejected.extend(prep.rejected)
            for samples, inputs in prep.groups:
                acts = residual(bundle, inputs, layer, stop=cfg.stop_at_layer)
                table, stats = batch_table(bundle, inputs, acts, samples, cfg.act_dtype)
                writer.write(table)
                sample_stats.extend(stats)
                for m in MODALITIES:
                    result.rows[m] += sum(st[f"n_{m}_tokens"] for st in stats)
            if pbar is not None:
                pbar.update(prep.n_rows)
                pbar.set_postfix(rows=sum(result.rows.values()), rejected=len(rejected), refresh=False)
        result.n_samples, result.n_rejected = len(sample_stats), len(rejected)
        writer.close({**{f"saev.rows.{m}": str(n) for m, n in result.rows.items()},
                      "saev.n_samples": str(result.n_samples), "saev.n_rejected": str(result.n_rejected)})
        with atomic_path(out / "rejected" / shard_name(index)) as tmp:
            pq.write_table(pa.Table.from_pylist([r.__dict__ for r in rejected], schema=REJECTED_SCHEMA), tmp)
        with atomic_path(out / "samples" / shard_name(index)) as tmp:
            pq.write_table(pa.Table.from_pylist(sample_stats, schema=SAMPLES_SCHEMA), tmp)
    return result


@contextlib.contextmanager
def _torch_threads(n: int | None, active: bool):
    """Temporarily set torch's intra-op threads (CPU forward only)."""
    before = torch.get_num_threads()
    if active and n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def plan_shards(cfg: DumpConfig) -> int:
    """How many shards the dump of ``cfg`` writes (for scheduling them as separate tasks)."""
    return max(1, math.ceil(len(open_dataset(cfg.dataset)) / cfg.samples_per_shard))


PREFLIGHT_ROWS = 8


def preflight(cfg: DumpConfig, bundle: ModelBundle, ds) -> None:
    """Stop before any work is written when the model or the mapping is wrong for every row:
    no chat template, or the first rows all rejected (a bad row is recorded and skipped; a
    configuration that fails on every row is not a bad row)."""
    render(bundle.processor, "?")  # NoChatTemplate names the fix
    items = list(iter_samples(ds, cfg.dataset, 0, min(len(ds), PREFLIGHT_ROWS)))
    samples = [x for x in items if isinstance(x, Sample)]
    rejected = [x for x in items if isinstance(x, Rejection)]
    if samples:
        groups, bad = encode_batch(bundle, samples, cfg.include_response, cfg.max_length or bundle.max_length)
        if groups:
            return
        rejected += bad
    if rejected:
        reasons = sorted({r.reason for r in rejected}, key=lambda r: -sum(x.reason == r for x in rejected))
        raise ValueError(f"the first {len(items)} rows of {cfg.dataset.display_name} all fail, so the model or the column mapping is "
                         f"wrong, not the rows: {reasons[0]}; fix the mapping (--set dataset.columns...) or the model before dumping")


def run_dump(cfg: DumpConfig, bundle: ModelBundle | None = None, overwrite: bool = False, shards: list[int] | None = None) -> dict:
    """Dump every shard (or only ``shards``) and write the manifest. Returns the manifest."""
    ds = open_dataset(cfg.dataset)
    resolve_columns(cfg.dataset, ds.column_names)  # a wrong mapping fails before the model loads
    bundle = bundle or load_model(cfg.model, cfg.device, cfg.dtype, chat_template=cfg.chat_template)
    layer = check_layer(bundle, cfg.layer)
    if bundle.cross_attention:
        warnings.warn(f"{cfg.model} reads images by cross-attention: its decoder's residual stream holds no image tokens (only "
                      "placeholders), so SAE-V's image/text overlap measures nothing there; use a model that feeds image tokens "
                      "to the decoder (LLaVA, Qwen-VL, Gemma3, Idefics3, ...)", UserWarning, stacklevel=2)
    preflight(cfg, bundle, ds)
    claim_output_dir(cfg.out, cfg.identity(), overwrite, "dump")
    n_shards = max(1, math.ceil(len(ds) / cfg.samples_per_shard))
    todo = range(n_shards) if shards is None else shards
    with (
        tqdm(total=len(ds), desc=f"dump {cfg.dataset.display_name} L{layer}", unit="sample", disable=not cfg.progress) as pbar,
        _torch_threads(cfg.cpu_threads, bundle.device.type == "cpu"),
    ):
        first = first_rows(ds, cfg.dataset)
        results = [dump_shard(cfg, bundle, ds, i, layer, first, pbar) for i in todo]
    if shards is not None and len(results) < n_shards:
        return {"shards": [r.__dict__ for r in results]}
    return write_manifest(cfg, bundle, layer, ds, results)


def hook_description(bundle: ModelBundle, layer: int) -> str:
    """What the dump holds, in words: block ``layer``'s output, pre-norm for the last block."""
    last = ", before the final norm (hidden_states[-1] is after it)" if layer == bundle.n_layers - 1 else f" (= hidden_states[{layer + 1}])"
    return f"{bundle.layers_path}.{layer} output: the residual stream after decoder block {layer}{last}"


def write_manifest(cfg: DumpConfig, bundle: ModelBundle, layer: int, ds, results: list[ShardResult]) -> dict:
    rows = {m: sum(r.rows[m] for r in results) for m in MODALITIES}
    manifest = {
        "kind": "saev.activations",
        "format_version": FORMAT_VERSION,
        "saev_core_version": __version__,
        "model": cfg.model,
        "layer": layer,
        "hook": hook_description(bundle, layer),
        "d_model": bundle.d_model,
        "n_layers": bundle.n_layers,
        "act_dtype": cfg.act_dtype,
        "compute_dtype": str(bundle.dtype).removeprefix("torch."),
        "include_response": cfg.include_response,
        "dataset": cfg.dataset.model_dump(),
        "dataset_name": cfg.dataset.display_name,
        "dataset_fingerprint": getattr(ds, "_fingerprint", None),
        "n_dataset_rows": len(ds),
        "n_samples": sum(r.n_samples for r in results),
        "n_rejected": sum(r.n_rejected for r in results),
        "rows": {**rows, "total": sum(rows.values())},
        "image_token_id": bundle.image_token_id,
        "chat_template": TEMPLATE_FILE if cfg.chat_template else None,
        # transformers picks a torchvision or a PIL image processor by what is installed; they resize differently
        "image_processor": type(bundle.processor.image_processor).__name__,
        "shards": [
            {"file": f"activations/{shard_name(r.index)}", "samples": r.n_samples, "rejected": r.n_rejected, "rows": sum(r.rows.values())}
            for r in results
        ],
    }
    if cfg.chat_template:
        with atomic_path(Path(cfg.out) / TEMPLATE_FILE) as tmp:
            Path(tmp).write_text(read_chat_template(cfg.chat_template))
    write_json(Path(cfg.out) / "manifest.json", manifest)
    return manifest

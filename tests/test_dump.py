"""Activation dump: the hooked tensor is the model's own hidden state, every non-padding
position is written once with the right modality, bad rows are recorded, reruns are idempotent."""

from __future__ import annotations

import io
import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from saev_core.activations.shards import FORMAT_VERSION, MODALITY_IDS, ActivationDump, column_dtype, decode
from saev_core.activations.data import DatasetSpec, iter_samples, open_dataset
from saev_core.activations.dump import DumpConfig, encode_batch, encode_samples, residual, run_dump
from saev_core.activations.modeling import load_model

LAYER = 2


def read_dir(path) -> pa.Table:
    files = sorted(os.listdir(path))
    return pa.concat_tables([pq.read_table(os.path.join(path, f)) for f in files])


@pytest.fixture(scope="module")
def rlaif(world_dir, world):
    return DatasetSpec(path=str(world_dir / world["datasets"]["demo-rlaif"]["path"]), limit=40)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, world_dir, rlaif, bundle):
    out = tmp_path_factory.mktemp("dump") / "d"
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=rlaif, layer=LAYER, out=str(out), batch_size=7,
                     samples_per_shard=16, act_dtype="float32", device="cpu", progress=False)
    manifest = run_dump(cfg, bundle=bundle)
    return cfg, manifest


def test_hooked_tensor_equals_model_hidden_state(bundle, rlaif):
    samples = [s for s in iter_samples(open_dataset(rlaif), rlaif, 0, 5)]
    [(kept, inputs)], rejected = encode_batch(bundle, samples, include_response=False, max_length=bundle.max_length)
    assert not rejected and len(kept) == 5
    with torch.inference_mode():
        ref = bundle.model(**inputs, output_hidden_states=True).hidden_states[LAYER + 1]
    for stop in (True, False):
        assert torch.equal(residual(bundle, inputs, LAYER, stop=stop), ref)


def test_last_block_is_hooked_before_the_final_norm(bundle, rlaif, tmp_path, world_dir):
    """``--layer -1`` is the last block's output: the residual before the final norm, so it is not
    ``hidden_states[-1]`` (after the norm), and the final norm of it is."""
    samples = [s for s in iter_samples(open_dataset(rlaif), rlaif, 0, 3)]
    [(_, inputs)], _ = encode_batch(bundle, samples, include_response=False, max_length=bundle.max_length)
    last = bundle.n_layers - 1
    with torch.inference_mode():
        hidden = bundle.model(**inputs, output_hidden_states=True).hidden_states
        got = residual(bundle, inputs, last)
        normed = bundle.model.get_decoder().norm(got)
    assert not torch.allclose(got, hidden[-1], atol=1e-3)
    torch.testing.assert_close(normed, hidden[-1])
    torch.testing.assert_close(residual(bundle, inputs, last - 1), hidden[-2], rtol=0, atol=0)
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=rlaif.model_copy(update={"limit": 3}), layer=-1, out=str(tmp_path / "d"),
                     device="cpu", progress=False)
    m = run_dump(cfg, bundle=bundle)
    assert m["layer"] == last and "before the final norm" in m["hook"]
    with pytest.raises(ValueError, match=f"layer {-bundle.n_layers - 1} is out of range"):
        run_dump(cfg.model_copy(update={"layer": -bundle.n_layers - 1, "out": str(tmp_path / "e")}), bundle=bundle)


def test_manifest_and_rows(dumped, bundle, rlaif):
    cfg, m = dumped
    assert m["n_samples"] == 40 and m["n_rejected"] == 0
    assert m["layer"] == LAYER and m["d_model"] == 128 and m["act_dtype"] == "float32"
    assert m["hook"].startswith("model.language_model.layers.2 ")
    assert len(m["shards"]) == 3 and [s["samples"] for s in m["shards"]] == [16, 16, 8]
    table = read_dir(os.path.join(cfg.out, "activations"))
    assert table.num_rows == m["rows"]["total"] == sum(m["rows"][k] for k in ("image", "text", "special"))
    counts = table.group_by(["sample_id", "modality"]).aggregate([("token_pos", "count")]).to_pylist()
    per = {}
    for c in counts:
        per.setdefault(c["sample_id"], {})[c["modality"]] = c["token_pos_count"]
    samples = [s for s in iter_samples(open_dataset(rlaif), rlaif)]
    assert set(per) == {s.sample_id for s in samples}
    for s in samples:
        # What the processor inserts for this sample alone: no padding anywhere.
        inputs = encode_samples(bundle, [s], False)
        ids = inputs["input_ids"][0]
        n_image = int((ids == bundle.image_token_id).sum())
        assert n_image == 16
        assert per[s.sample_id]["image"] == n_image
        assert sum(per[s.sample_id].values()) == ids.numel()
        assert per[s.sample_id]["special"] == 1  # BOS only; padding never written
    assert bundle.processor.tokenizer.pad_token_id not in set(table.column("token_id").to_pylist())


def test_dumped_activations_match_unbatched_forward(dumped, bundle, rlaif):
    cfg, _ = dumped
    table = pq.read_table(os.path.join(cfg.out, "activations", "shard-00001.parquet"))
    s = next(x for x in iter_samples(open_dataset(rlaif), rlaif, 16, 17))
    rows = table.filter(pc.equal(table.column("sample_id"), s.sample_id)).sort_by("token_pos")
    inputs = encode_samples(bundle, [s], False)
    with torch.inference_mode():
        ref = bundle.model(**inputs, output_hidden_states=True).hidden_states[LAYER + 1][0]
    got = decode(rows.column("activation"), column_dtype(rows.schema.field("activation"))).astype(np.float32)
    assert rows.column("token_pos").to_pylist() == list(range(ref.shape[0]))
    assert set(rows.column("row_index").to_pylist()) == {s.row_index}
    assert rows.column("token_id").to_pylist() == inputs["input_ids"][0].tolist()
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)
    modality = rows.column("modality").to_pylist()
    ids = inputs["input_ids"][0].tolist()
    assert [m == "image" for m in modality] == [t == bundle.image_token_id for t in ids]
    assert modality[0] == "special" and modality[-1] == "text"
    assert rows.column("modality_id").to_pylist() == [MODALITY_IDS[m] for m in modality]


def test_rerun_is_idempotent_and_resumes(dumped, bundle):
    cfg, manifest = dumped
    act = os.path.join(cfg.out, "activations")
    before = {f: pq.read_table(os.path.join(act, f)) for f in sorted(os.listdir(act))}
    mtimes = {f: os.stat(os.path.join(act, f)).st_mtime_ns for f in before}
    assert run_dump(cfg, bundle=bundle) == manifest
    assert {f: os.stat(os.path.join(act, f)).st_mtime_ns for f in before} == mtimes  # nothing recomputed
    os.remove(os.path.join(act, "shard-00001.parquet"))  # a crash before shard 1 finished
    assert run_dump(cfg, bundle=bundle) == manifest
    assert sorted(os.listdir(act)) == sorted(before)
    assert pq.read_table(os.path.join(act, "shard-00001.parquet")).equals(before["shard-00001.parquet"])
    assert not [f for f in os.listdir(act) if f.startswith(".")]  # no temp files left behind


def test_float16_storage(tmp_path, world_dir, rlaif, bundle):
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=rlaif.model_copy(update={"limit": 4}), layer=LAYER,
                     out=str(tmp_path / "f16"), progress=False)
    run_dump(cfg, bundle=bundle)
    t = pq.read_table(tmp_path / "f16/activations/shard-00000.parquet")
    field = t.schema.field("activation")
    assert field.type == pa.binary(2 * 128) and column_dtype(field) == np.float16  # one fixed-size cell per token
    dump = ActivationDump.open(tmp_path / "f16")
    assert (dump.version, dump.dtype) == (FORMAT_VERSION, np.float16)
    x = decode(t.column("activation"), np.float16)
    assert x.shape == (t.num_rows, 128) and np.isfinite(x).all() and np.abs(x).max() > 0


def test_a_format_1_dump_is_not_resumed_in_format_2(tmp_path, world_dir, rlaif, bundle):
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=rlaif.model_copy(update={"limit": 4}), layer=LAYER,
                     out=str(tmp_path / "old"), samples_per_shard=2, progress=False)
    run_dump(cfg, bundle=bundle)
    # what an older saev left: its shard 0 in the list layout, shard 1 not yet written
    shard = tmp_path / "old/activations/shard-00000.parquet"
    t = pq.read_table(shard)
    x = decode(t.column("activation"), np.float16)
    old = t.drop_columns(["row_index", "modality_id", "activation"]).append_column(
        "activation", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 128))
    pq.write_table(old, shard)
    (tmp_path / "old/activations/shard-00001.parquet").unlink()
    (tmp_path / "old/manifest.json").unlink()
    with pytest.raises(ValueError, match="dump format 1"):
        run_dump(cfg, bundle=bundle)


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_rows_land_in_rejected_and_the_rest_is_dumped(tmp_path, world_dir, bundle):
    good = {"image": {"bytes": _png(), "path": None}, "question": "what color is the square ?", "answer": "the square is green ."}
    rows = [
        good,
        {**good, "image": {"bytes": b"garbage", "path": None}},
        {**good, "question": ""},
        {**good, "question": "what " * 200 + "?"},  # longer than the 128-token context
        {**good, "answer": "the square is red ."},
        good,  # exact duplicate of row 0
    ]
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "bad.parquet"))
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=DatasetSpec(path=str(tmp_path / "bad.parquet")), layer=LAYER,
                     out=str(tmp_path / "out"), batch_size=8, progress=False)
    m = run_dump(cfg, bundle=bundle)
    assert (m["n_samples"], m["n_rejected"]) == (2, 4)
    rejected = {r["row_index"]: r["reason"] for r in pq.read_table(tmp_path / "out/rejected/shard-00000.parquet").to_pylist()}
    assert set(rejected) == {1, 2, 3, 5}
    assert "cannot be decoded" in rejected[1]
    assert rejected[2] == "question is empty"
    assert "more than the model's context of 128" in rejected[3]
    assert "duplicate" in rejected[5]
    samples = pq.read_table(tmp_path / "out/samples/shard-00000.parquet").to_pylist()
    assert [s["row_index"] for s in samples] == [0, 4]
    assert all(s["n_image_tokens"] == 16 for s in samples)


def test_include_response_appends_the_answer(tmp_path, world_dir, rlaif, bundle):
    base = dict(model=str(world_dir / "model"), dataset=rlaif.model_copy(update={"limit": 3}), layer=LAYER, progress=False)
    a = run_dump(DumpConfig(**base, out=str(tmp_path / "a")), bundle=bundle)
    b = run_dump(DumpConfig(**base, out=str(tmp_path / "b"), include_response=True), bundle=bundle)
    assert b["rows"]["image"] == a["rows"]["image"]
    assert b["rows"]["text"] > a["rows"]["text"]
    assert b["rows"]["special"] == 2 * a["rows"]["special"]  # BOS + the EOS closing the answer


def test_bad_config_fails_before_any_work(tmp_path, world_dir, rlaif, bundle):
    model = str(world_dir / "model")
    with pytest.raises(ValueError, match="layer 4 is out of range: .* has 4 decoder blocks"):
        run_dump(DumpConfig(model=model, dataset=rlaif, layer=4, out=str(tmp_path / "a")), bundle=bundle)
    with pytest.raises(FileNotFoundError, match="model path .* does not exist"):
        run_dump(DumpConfig(model=str(tmp_path / "no-model"), dataset=rlaif, layer=1, out=str(tmp_path / "b")))
    bad_map = rlaif.model_copy(update={"columns": {"question": "prompt"}})
    with pytest.raises(ValueError, match="'question': 'prompt'"):
        run_dump(DumpConfig(model=model, dataset=bad_map, layer=1, out=str(tmp_path / "c")), bundle=bundle)
    assert not any((tmp_path / d).exists() for d in "abc")
    # Another config into an existing dump directory is refused.
    cfg = DumpConfig(model=model, dataset=rlaif.model_copy(update={"limit": 2}), layer=1, out=str(tmp_path / "d"), progress=False)
    run_dump(cfg, bundle=bundle)
    with pytest.raises(ValueError, match="different config"):
        run_dump(cfg.model_copy(update={"layer": 0}), bundle=bundle)
    assert json.loads((tmp_path / "d/config.json").read_text())["layer"] == 1


def test_load_model_resolves_the_language_model_blocks(world_dir):
    b = load_model(str(world_dir / "model"), device="cpu")
    assert b.n_layers == 4 and b.layers_path == "model.language_model.layers"
    assert b.image_token_id == b.processor.tokenizer.convert_tokens_to_ids("<image>")
    assert b.max_length == 128 and b.dtype == torch.float32
    assert b.processor.tokenizer.bos_token_id in b.special_ids

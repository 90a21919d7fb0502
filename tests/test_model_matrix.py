"""The model matrix: every supported family, as a tiny random-weight model with its real processor
class (``tests/_families.py``), through the real loading code at the default batch size.

Per family: the dump holds, for each sample, exactly the image rows the processor inserted, no
padding, one BOS, and the model's own hidden state after the hooked block.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from _families import FAMILIES, build_family, missing_requirements
from saev_core.data import DatasetSpec, Sample, iter_samples, open_dataset
from saev_core.dump import DumpConfig, encode_samples, run_dump
from saev_core.inputs import NoChatTemplate
from saev_core.modeling import load_model

N_ROWS = 20  # more than one default batch (16), so batching and padding are exercised
LAYER = 0


def _family(name: str):
    if missing := missing_requirements(name):
        pytest.skip(f"{name} needs {' and '.join(missing)}")
    return name


@pytest.fixture(scope="module")
def rows(world_dir, world):
    return DatasetSpec(path=str(world_dir / world["datasets"]["demo-rlaif"]["path"]), limit=N_ROWS)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    name = _family(request.param)
    out = tmp_path_factory.mktemp(name)
    template = True if name == "paligemma" else None  # PaliGemma ships none: the user passes one
    facts = build_family(name, out / "model", template=template)
    return name, out, facts


@pytest.fixture(scope="module")
def dumped(family, rows):
    name, out, facts = family
    cfg = DumpConfig(model=str(out / "model"), dataset=rows, layer=LAYER, out=str(out / "dump"), act_dtype="float32",
                     device="cpu", progress=False)
    bundle = load_model(cfg.model, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = run_dump(cfg, bundle=bundle)
    cross = [w for w in caught if "reads images by cross-attention" in str(w.message)]
    assert bool(cross) == facts["cross_attention"], f"{name}: cross-attention warning {'missing' if facts['cross_attention'] else 'unexpected'}"
    return cfg, bundle, manifest, facts


def _table(path) -> pa.Table:
    return pa.concat_tables([pq.read_table(os.path.join(path, f)) for f in sorted(os.listdir(path))])


def test_dump_holds_each_samples_own_tokens_and_hidden_state(dumped, rows):
    cfg, bundle, manifest, facts = dumped
    assert manifest["n_samples"] == N_ROWS and manifest["n_rejected"] == 0
    acts = _table(os.path.join(cfg.out, "activations"))
    pad = bundle.processor.tokenizer.pad_token_id
    for s in (x for x in iter_samples(open_dataset(rows), rows) if isinstance(x, Sample)):
        inputs = encode_samples(bundle, [s], cfg.include_response)  # this sample alone: no padding
        ids = inputs["input_ids"][0]
        mine = acts.filter(pa.compute.equal(acts.column("sample_id"), s.sample_id)).sort_by("token_pos")
        assert mine.column("token_id").to_pylist() == ids.tolist()
        n_image = int((ids == bundle.image_token_id).sum())
        assert n_image > 0 and mine.column("modality").to_pylist().count("image") == n_image
        if facts["bos_token_id"] is not None:
            assert int((ids == facts["bos_token_id"]).sum()) == 1, f"{facts['family']}: not exactly one BOS in {ids.tolist()}"
        assert pad is None or pad == facts["bos_token_id"] or pad not in ids.tolist()
        with torch.inference_mode():
            ref = bundle.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[LAYER + 1][0]
        got = np.stack(mine.column("activation").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got, ref.float().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["paligemma", "chameleon"])
def test_a_processor_without_a_template_fails_before_any_work(name, rows, tmp_path):
    _family(name)
    build_family(name, tmp_path / "model", template=False)
    cfg = DumpConfig(model=str(tmp_path / "model"), dataset=rows, layer=LAYER, out=str(tmp_path / "dump"), device="cpu", progress=False)
    with pytest.raises(NoChatTemplate, match="--chat-template FILE"):
        run_dump(cfg)
    assert not (tmp_path / "dump").exists()


def test_chat_template_file_makes_a_bare_processor_usable(rows, tmp_path):
    """PaliGemma as shipped has no template; ``saev dump --chat-template FILE`` supplies one."""
    from _families import PALIGEMMA_TEMPLATE
    from typer.testing import CliRunner

    from saev_core.cli import app

    _family("paligemma")
    build_family("paligemma", tmp_path / "model")
    (tmp_path / "template.jinja").write_text(PALIGEMMA_TEMPLATE)
    args = ["dump", "--model", str(tmp_path / "model"), "--dataset", rows.path, "--limit", "4", "--layer", "0",
            "--out", str(tmp_path / "dump"), "--device", "cpu"]
    bare = CliRunner().invoke(app, args)
    assert bare.exit_code != 0 and "--chat-template FILE" in bare.output and not (tmp_path / "dump").exists()
    ok = CliRunner().invoke(app, [*args, "--chat-template", str(tmp_path / "template.jinja")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "dump" / "manifest.json").exists()


def test_a_mapping_every_first_row_fails_stops_before_any_work(world_dir, world, bundle, tmp_path):
    """A text field mapped to the image column: every row would be rejected, so nothing is written."""
    spec = DatasetSpec(path=str(world_dir / world["datasets"]["demo-rlaif"]["path"]), limit=N_ROWS, columns={"question": "image"})
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=spec, layer=LAYER, out=str(tmp_path / "dump"), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"the first \d+ rows of .* all fail, so the model or the column mapping is wrong"):
        run_dump(cfg, bundle=bundle)
    assert not (tmp_path / "dump").exists()

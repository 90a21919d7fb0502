"""The model matrix: every supported family, as a tiny random-weight model with its real processor
class (``tests/_families.py``), through the real loading code at the default batch size.

Per family, every stage a user runs on a real checkpoint: the dump holds, for each sample, exactly
the image rows the processor inserted, no padding, one BOS, and the model's own hidden state after
the hooked block; an SAE trains on it, scores every sample, and splices back into the model for
CE-with-images (in float32 and bfloat16); the model evaluates on held-out rows; one SFT and one
DPO step run through TRL and the aligned model reloads.
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
from saev_core.alignment.align import AlignConfig, run_alignment
from saev_core.sae.checkpoint import load_sae
from saev_core.activations.data import DatasetSpec, Sample, iter_samples, open_dataset
from saev_core.activations.dump import DumpConfig, encode_samples, run_dump
from saev_core.sae.evaluate import cross_entropy, evaluate_run, heldout_samples
from saev_core.alignment.filter import FilterConfig, run_filter
from saev_core.activations.shards import ActivationDump, column_dtype, decode
from saev_core.activations.inputs import NoChatTemplate, chat_template
from saev_core.alignment.model_eval import evaluate_model
from saev_core.activations.modeling import load_model
from saev_core.scoring.run import ScoreConfig, run_scoring
from saev_core.scoring.scorers import default_scorers
from saev_core.sae.train import TrainConfig, train_sae

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
        got = decode(mine.column("activation"), column_dtype(mine.schema.field("activation"))).astype(np.float32)
        np.testing.assert_allclose(got, ref.float().numpy(), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def scored(family, dumped):
    """A small top-k SAE trained on the family's dump, and every sample scored with it."""
    name, out, _ = family
    cfg = dumped[0]
    train = train_sae(TrainConfig(activations=cfg.out, out=str(out / "sae"), architecture="topk", k=4, expansion_factor=2,
                                  batch_size=64, total_tokens=64 * 30, scale_batches=2, buffer_rows=1024, eval_rows=256,
                                  device="cpu", progress=False))
    score = run_scoring(ScoreConfig(activations=cfg.out, sae=str(out / "sae"), tables=str(out / "tables"), top=10, per_side=2,
                                    reference_samples=N_ROWS, device="cpu", progress=False))
    return train, score


def test_sae_trains_and_scores_every_sample(scored, dumped):
    import duckdb

    train, score = scored
    assert train["steps"] == 30 and np.isfinite(train["heldout"]["all"]["fvu"]) and train["heldout"]["image"]["n_tokens"] > 0
    assert score["n_samples"] == N_ROWS
    rows = duckdb.sql(f"SELECT scorer, count(*) AS n, count_if(isfinite(score)) AS ok FROM read_parquet('{score['tables']}/scores/**/*.parquet') "
                      "GROUP BY scorer").fetchall()
    assert {r[0] for r in rows} == set(default_scorers()) and all(n == ok == N_ROWS for _, n, ok in rows), rows


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sae_splices_back_for_ce_with_images(family, scored, dumped, dtype):
    """eval-sae's CE with images; in bfloat16 the processor's float32 pixel values must be cast."""
    name, out, _ = family
    if dtype == "float32":
        report = evaluate_run(str(out / "sae"), n_samples=4, device="cpu")
        ce = report["ce_with_images"]
    else:
        cfg = dumped[0]
        bundle = load_model(cfg.model, device="cpu", dtype=dtype)
        dump = ActivationDump.open(cfg.out, 0.05)
        ce = cross_entropy(bundle, load_sae(out / "sae" / "sae"), 0, heldout_samples(dump, 2))
    assert ce["n_tokens"] > 0 and all(np.isfinite(ce[k]) for k in ("ce_clean", "ce_sae", "ce_zero")), ce


def test_model_evaluates_on_heldout_rows(family, dumped, world_dir):
    cfg, bundle = dumped[:2]
    report = evaluate_model(bundle, DatasetSpec(path=str(world_dir / "heldout/clean.parquet")), n_samples=4, max_new_tokens=4)
    assert report["n"] == 4 and np.isfinite(report["nll"]) and 0 <= report["preference_accuracy"] <= 1
    assert all(isinstance(e["generated"], str) for e in report["examples"])


# TRL's collators tokenise the completion without the image and leave a cross-attention mask at
# the prompt's length: these fail before training, with the reason.
NOT_ALIGNABLE = {"paligemma": "cannot tokenise a completion without its image", "mllama": "does not extend its cross_attention_mask"}


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_one_trl_step_aligns_and_reloads(family, scored, method):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name, out, _ = family
    kept = out / "kept"
    if not (kept / "manifest.json").exists():
        run_filter(FilterConfig(tables=scored[1]["tables"], out=str(kept), scorer="agreement", top_k=4))
    cfg = AlignConfig(model=str(out / "model"), data=str(kept), out=str(out / method), method=method, max_steps=1, batch_size=2, lr=1e-4)
    if name in NOT_ALIGNABLE:
        with pytest.raises(ValueError, match=NOT_ALIGNABLE[name]):
            run_alignment(cfg)
        assert not (out / method).exists()
        return
    m = run_alignment(cfg)
    assert m["steps"] == 1 and np.isfinite(m["last_loss"]), m
    model = AutoModelForImageTextToText.from_pretrained(out / method / "model")
    assert model.config.model_type == AutoModelForImageTextToText.from_pretrained(out / "model").config.model_type
    assert chat_template(AutoProcessor.from_pretrained(out / method / "model"))  # saved with the template it trained on


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

    from saev_core.cli.app import app

    _family("paligemma")
    build_family("paligemma", tmp_path / "model")
    (tmp_path / "template.jinja").write_text(PALIGEMMA_TEMPLATE)
    args = ["dump", "--model", str(tmp_path / "model"), "--dataset", rows.path, "--limit", "4", "--layer", "0",
            "--out", str(tmp_path / "dump"), "--device", "cpu"]
    bare = CliRunner().invoke(app, args)
    assert bare.exit_code != 0 and "--chat-template FILE" in bare.output and not (tmp_path / "dump").exists()
    ok = CliRunner().invoke(app, [*args, "--chat-template", str(tmp_path / "template.jinja")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "dump" / "chat_template.jinja").read_text() == PALIGEMMA_TEMPLATE  # the dump keeps what it rendered with
    # eval-sae reloads the bare model and renders with the dump's copy of the template
    train_sae(TrainConfig(activations=str(tmp_path / "dump"), out=str(tmp_path / "sae"), architecture="topk", k=4, expansion_factor=2,
                          batch_size=32, total_tokens=32 * 4, scale_batches=1, buffer_rows=256, eval_rows=0, heldout_fraction=0.25,
                          device="cpu", progress=False))
    ev = CliRunner().invoke(app, ["eval-sae", str(tmp_path / "sae"), "--n-samples", "1", "--device", "cpu"])
    assert ev.exit_code == 0 and "CE-loss-recovered" in ev.output, ev.output
    heldout = ["evaluate", str(tmp_path / "model"), "--heldout", rows.path, "--n-samples", "2", "--device", "cpu"]
    bare = CliRunner().invoke(app, heldout)
    assert bare.exit_code != 0 and "--chat-template FILE" in bare.output
    ok = CliRunner().invoke(app, [*heldout, "--chat-template", str(tmp_path / "template.jinja")])
    assert ok.exit_code == 0 and '"answer_accuracy"' in ok.output, ok.output


def test_the_template_counts_by_content_not_path(rows, tmp_path):
    """Editing a --chat-template file changes the dump's identity; a config made before the edit is refused."""
    from _families import PALIGEMMA_TEMPLATE

    template = tmp_path / "template.jinja"
    template.write_text(PALIGEMMA_TEMPLATE)
    base = dict(model="m", dataset=rows, layer=0, out=str(tmp_path / "dump"))
    first = DumpConfig(**base, chat_template=str(template))
    moved = tmp_path / "moved.jinja"
    moved.write_text(PALIGEMMA_TEMPLATE)
    assert DumpConfig(**base, chat_template=str(moved)).identity() == first.identity()
    template.write_text(PALIGEMMA_TEMPLATE.replace("\n", " \n"))
    assert DumpConfig(**base, chat_template=str(template)).identity() != first.identity()
    with pytest.raises(ValueError, match="changed since this config was made"):
        DumpConfig.model_validate(first.model_dump())


def test_a_mapping_every_first_row_fails_stops_before_any_work(world_dir, world, bundle, tmp_path):
    """A text field mapped to the image column: every row would be rejected, so nothing is written."""
    spec = DatasetSpec(path=str(world_dir / world["datasets"]["demo-rlaif"]["path"]), limit=N_ROWS, columns={"question": "image"})
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=spec, layer=LAYER, out=str(tmp_path / "dump"), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"the first \d+ rows of .* all fail, so the model or the column mapping is wrong"):
        run_dump(cfg, bundle=bundle)
    assert not (tmp_path / "dump").exists()


def test_the_families_that_need_torchvision_in_a_process_that_has_it():
    """The `vision` extra stays off this process's path (it would switch the demo's image processor
    to torchvision's backend, docs/models-and-data.md, "Dependencies"); ``make test`` installs it in SAEV_VISION_PATH,
    and the families that need it run the whole matrix above in a subprocess that has it."""
    import subprocess
    import sys

    needing = [n for n in FAMILIES if missing_requirements(n)]
    if not needing:
        pytest.skip("torchvision and num2words are importable here, so the matrix above ran every family")
    site = os.environ.get("SAEV_VISION_PATH")
    if not site or not os.path.isdir(site):
        pytest.skip(f"{', '.join(needing)} need torchvision and num2words: set SAEV_VISION_PATH to a directory holding them "
                    "(make test installs them in .venv/vision)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)}
    selected = " or ".join([*needing, "torchvision_loads"])
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-v", "-p", "no:cacheprovider", "-k", selected],
                         env=env, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    log = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0 and " SKIPPED" not in run.stdout, log
    for name in needing:  # every stage ran for each of them
        assert sum(name in line and " PASSED" in line for line in run.stdout.splitlines()) >= 7, log
    assert "test_torchvision_loads_for_the_processors_that_need_it PASSED" in run.stdout, log


def test_torchvision_loads_for_the_processors_that_need_it():
    """A fresh process (the import is process-wide): torchvision imports through the guard, its
    image transforms run, and a Qwen2-VL video processor (torchvision-only) can be built."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("torchvision") is None:  # the `vision` extra; the test extra installs it
        pytest.skip("torchvision is not installed")
    code = ("import torch; from saev_core.activations.torchvision_compat import ensure_torchvision; assert ensure_torchvision(); "
            "import torchvision.transforms.v2.functional as F; "
            "out = F.resize(torch.rand(3, 8, 8), [4, 4], antialias=True); assert out.shape == (3, 4, 4); "
            "from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor; "
            "Qwen2VLVideoProcessor(); print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]

"""Scoring a real dump with a real SAE: the streamed feature tables equal a dense recomputation,
round-trip through DuckDB, resume after a crash, and feed the filter and a real TRL trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import Field
from typer.testing import CliRunner

from saev_core.activations.shards import ActivationDump, to_tensor
from saev_core.sae.checkpoint import load_sae, save_sae
from saev_core.cli.app import app
from saev_core.activations.data import DatasetSpec
from saev_core.activations.dump import DumpConfig, run_dump
from saev_core.alignment.filter import FilterConfig, load_filtered, run_filter
from saev_core.scoring.quality import auroc, render_quality, scorer_quality, top_fraction_clean
from saev_core.tables.query import connect, open_views
from saev_core.sae.model import SAE, SAEConfig
from saev_core.scoring.run import ScoreConfig, run_scoring
from saev_core.scoring.scorers import SCORERS, Dataset, SampleSummary, Scorer, ScorerParams, default_scorers, register, text_latents
from tests.reference import balanced_weights, cross_modal_weights, summary_from_acts
from saev_core.sae.train import TrainConfig, train_sae


@pytest.fixture(scope="module")
def scored(tmp_path_factory, world_dir, world, bundle):
    base = tmp_path_factory.mktemp("score")
    spec = DatasetSpec(path=str(world_dir / world["datasets"]["demo-rlaif"]["path"]))
    run_dump(DumpConfig(model=str(world_dir / "model"), dataset=spec, layer=2, out=str(base / "dump"), samples_per_shard=40,
                        batch_size=20, progress=False), bundle=bundle)
    train_sae(TrainConfig(activations=str(base / "dump"), out=str(base / "sae"), architecture="topk", k=8, expansion_factor=4,
                          batch_size=256, total_tokens=256 * 60, scale_batches=4, buffer_rows=2048, progress=False))
    cfg = ScoreConfig(activations=str(base / "dump"), sae=str(base / "sae"), tables=str(base / "tables"), progress=False,
                      top=10, per_side=2)
    manifest = run_scoring(cfg)
    return base, cfg, manifest


def dense_summaries(base) -> tuple[dict[str, SampleSummary], torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Every sample's summary from dense codes of all its rows at once (no streaming)."""
    dump = ActivationDump.open(base / "dump")
    sae = load_sae(base / "sae" / "sae")
    rows = pq.read_table(dump.files[0].parent)
    rows = rows.filter(np.asarray(rows.column("modality").to_pylist()) != "special")
    x = to_tensor(rows)
    with torch.no_grad():
        f = sae.encode(x)
    img = torch.tensor([m == "image" for m in rows.column("modality").to_pylist()])
    sids = rows.column("sample_id").to_pylist()
    out = {}
    for sid in dict.fromkeys(sids):
        sel = torch.tensor([s == sid for s in sids])
        out[sid] = summary_from_acts(sid, f[sel], img[sel], x[sel])
    return out, f, img, x, sids


def test_tables_match_a_dense_recomputation_through_duckdb(scored):
    base, cfg, manifest = scored
    con = connect(cfg.tables)
    dense, f, img, x, _ = dense_summaries(base)
    assert manifest["n_samples"] == len(dense) == con.execute("SELECT count(*) FROM samples").fetchone()[0]

    # sample_features: one row per (sample, modality, active latent), max matching the dense codes
    feats = con.execute("SELECT sample_id, feature_id, modality, max_act, n_active_tokens, dataset, sae_id FROM sample_features").df()
    assert set(feats["dataset"]) == {"demo-rlaif"} and set(feats["sae_id"]) == {manifest["sae_id"]}
    for sid in list(dense)[:15]:
        s = dense[sid]
        g = feats[feats.sample_id == sid]
        for mod, ids, mx in (("image", s.image_ids, s.image_max), ("text", s.text_ids, s.text_max)):
            part = g[g.modality == mod].sort_values("feature_id")
            assert part.feature_id.tolist() == ids.tolist()
            np.testing.assert_allclose(part.max_act.to_numpy(), mx, rtol=1e-5, atol=1e-6)
        assert int(g.n_active_tokens.sum()) == s.n_active
    # files are sorted by feature_id
    for part in (base / "tables" / "sample_features").rglob("*.parquet"):
        ids = pq.read_table(part, columns=["feature_id"]).column(0).to_numpy()
        assert (np.diff(ids) >= 0).all()

    # cross-modal weights equal Algorithm 1 on the in-memory pool (every sample is a reference here)
    w_dense = cross_modal_weights(f, img, x, top=cfg.top, per_side=cfg.per_side).numpy()
    stats = con.execute("SELECT feature_id, cross_modal_weight, kind FROM feature_stats ORDER BY feature_id").df()
    w_table = np.zeros_like(w_dense)
    w_table[stats.feature_id.to_numpy()] = stats.cross_modal_weight.to_numpy()
    np.testing.assert_allclose(w_table, w_dense, atol=1e-5)
    assert (stats.kind == "cross-modal").sum() == manifest["n_cross_modal"] > 0
    # ... and the balanced weights equal the per-modality pools recomputed in memory
    wb_dense = balanced_weights(f, img, x, per_side=cfg.per_side).numpy()
    wb_table = np.zeros_like(wb_dense)
    wb_table[stats.feature_id.to_numpy()] = con.execute("SELECT balanced_weight FROM feature_stats ORDER BY feature_id").df().balanced_weight
    np.testing.assert_allclose(wb_table, wb_dense, atol=1e-5)
    assert (wb_dense != 0).sum() == manifest["n_cross_modal_balanced"] >= manifest["n_cross_modal"]

    # scores equal each scorer applied to the dense summaries; rank 1 is the top score
    data = Dataset(dense.values, len(w_dense), cfg.params, cfg.seed, cfg.tau, w_dense, wb_dense)
    scores = con.execute("SELECT sample_id, scorer, score, rank, percentile FROM scores WHERE dataset = $d", {"d": "demo-rlaif"}).df()
    assert set(scores.scorer) == set(default_scorers())  # every scorer but those with a model of their own
    for name in default_scorers():
        g = scores[scores.scorer == name].set_index("sample_id")
        state = data.state_of(name)
        expect = np.array([SCORERS[name].score(dense[s], state) for s in g.index])
        np.testing.assert_allclose(g.score.to_numpy(), expect, rtol=1e-5, atol=1e-5)
        assert g.loc[g["rank"] == 1, "score"].iloc[0] == g.score.max()
        assert g.percentile.max() == 1.0 and sorted(g["rank"]) == list(range(1, len(g) + 1))


class _TextShareParams(ScorerParams):
    prefix = "text_share"
    tau: float = Field(0.0, ge=0)


class _TextShare(Scorer):
    """A scorer with a fit, defined where no saev code knows it: the share of the dataset's samples
    whose text fires the sample's rarest text latent (above its own tau)."""

    name = "text_share"
    default = False
    Params = _TextShareParams

    def fit(self, data: Dataset, params: _TextShareParams) -> tuple[float, np.ndarray, int]:
        counts = np.zeros(data.d_sae, np.int64)
        n = 0
        for s in data.summaries():
            np.add.at(counts, text_latents(s, params.tau), 1)
            n += 1
        return params.tau, counts, n

    def score(self, s: SampleSummary, state) -> float:
        tau, counts, n = state
        t = text_latents(s, tau)
        return float(counts[t].min()) / n if len(t) else 0.0


def test_a_scorer_with_a_fit_needs_no_edit_of_the_scoring_run(scored, tmp_path):
    """A registered scorer with its own params and fit is scored like the built-in ones, from the
    flat spelling too, and its values are its fit's."""
    base, cfg, _ = scored
    register(_TextShare)
    try:
        new = ScoreConfig.model_validate({**cfg.model_dump(exclude={"scorers"}), "tables": str(tmp_path / "t"), "text_share_tau": 0.5})
        assert new.scorers[-1] == "text_share" and new.params["text_share"].tau == 0.5
        manifest = run_scoring(new)
        assert manifest["identity"]["params"]["text_share"] == {"tau": 0.5}
        got = open_views(new.tables).execute("SELECT sample_id, score FROM scores WHERE scorer = 'text_share'").fetchall()
        dense, *_ = dense_summaries(base)
        counts = {}
        for s in dense.values():
            for i in text_latents(s, 0.5).tolist():
                counts[i] = counts.get(i, 0) + 1
        expect = {sid: min((counts[i] for i in text_latents(s, 0.5).tolist()), default=0) / len(dense) for sid, s in dense.items()}
        assert len(got) == len(dense) and all(v == pytest.approx(expect[sid], abs=1e-9) for sid, v in got)
    finally:
        SCORERS.pop("text_share")


def test_batch_boundaries_do_not_change_the_tables(scored, tmp_path):
    base, cfg, _ = scored
    small = cfg.model_copy(update={"tables": str(tmp_path / "t"), "batch_rows": 37})  # samples span batches
    run_scoring(small)
    for table in ("sample_features", "scores", "feature_stats"):
        a = pq.read_table(next((base / "tables" / table).rglob("part-00001.parquet" if table == "sample_features" else "*.parquet")))
        b = pq.read_table(next((tmp_path / "t" / table).rglob("part-00001.parquet" if table == "sample_features" else "*.parquet")))
        assert a.num_rows == b.num_rows
        for col in a.column_names:
            if a.schema.field(col).type in ("float", "double"):
                np.testing.assert_allclose(a.column(col).to_numpy(), b.column(col).to_numpy(), rtol=1e-4, atol=1e-5)
            else:
                assert a.column(col).to_pylist() == b.column(col).to_pylist(), (table, col)


def test_crashed_scoring_resumes_and_a_rerun_does_nothing(scored, tmp_path):
    base, cfg, full = scored
    cfg2 = cfg.model_copy(update={"tables": str(tmp_path / "t")})
    assert run_scoring(cfg2, stop_after_shards=1) == {"stopped_after_shards": 1}
    assert not list((tmp_path / "t").glob("manifests/**/*.json"))
    parts = sorted((tmp_path / "t" / "sample_features").rglob("*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet"]
    first_mtime = parts[0].stat().st_mtime_ns
    resumed = run_scoring(cfg2)
    assert parts[0].stat().st_mtime_ns == first_mtime  # the finished shard was not redone
    assert resumed["score_summary"] == full["score_summary"]
    mf = next((tmp_path / "t" / "manifests").rglob("*.json"))
    before = mf.stat().st_mtime_ns
    assert run_scoring(cfg2) == resumed and mf.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="already scored .* under another config.*--overwrite"):
        run_scoring(cfg2.model_copy(update={"tau": 0.5}))
    assert run_scoring(cfg2.model_copy(update={"tau": 0.5}), overwrite=True)["identity"]["tau"] == 0.5


def test_a_partition_scored_before_scorers_had_their_own_params_is_still_the_same(scored, tmp_path):
    """Its manifest holds the flat identity saev wrote then (agreement_tau, ..., clip_model: None):
    the same config finds it scored, and another config still refuses it."""
    import shutil

    base, cfg, manifest = scored
    tables = tmp_path / "tables"
    shutil.copytree(cfg.tables, tables)
    mpath = next((tables / "manifests").rglob("*.json"))
    new = json.loads(mpath.read_text())
    old = {k: v for k, v in new["identity"].items() if k != "params"}
    old |= {"agreement_tau": 0.5, "agreement_refits": 2, "agreement_keep": 0.5, "agreement_peers": 100, "agreement_peer_pool": 5000,
            "clip_model": None}
    mpath.write_text(json.dumps({**new, "identity": old}))
    again = cfg.model_copy(update={"tables": str(tables)})
    assert run_scoring(again)["identity"] == old  # found, not rescored
    with pytest.raises(ValueError, match="already scored with SAE .* under another config"):
        run_scoring(ScoreConfig.model_validate({**again.model_dump(), "agreement_tau": 0.25}))


def test_bad_scoring_input_fails_fast(scored, tmp_path):
    base, cfg, _ = scored
    other = SAE(SAEConfig(architecture="topk", d_in=7, d_sae=14, k=2))
    save_sae(other, tmp_path / "wrong-sae")
    with pytest.raises(ValueError, match="d_in=7 .* d_model=128: they come from a different model or layer"):
        run_scoring(cfg.model_copy(update={"sae": str(tmp_path / "wrong-sae"), "tables": str(tmp_path / "t")}))
    with pytest.raises(ValueError, match=r"unknown scorer 'clip'; valid scorers: \["):
        ScoreConfig(activations="a", sae="b", scorers=["saev", "clip"])
    with pytest.raises(ValueError, match="cannot name a table partition"):
        run_scoring(cfg.model_copy(update={"dataset_name": "../escape", "tables": str(tmp_path / "t")}))
    with pytest.raises(FileNotFoundError, match="holds no SAE"):
        run_scoring(cfg.model_copy(update={"sae": str(tmp_path), "tables": str(tmp_path / "t")}))


def test_filter_artifact_trains_real_trl_sft_and_dpo(scored, tmp_path, world_dir):
    base, cfg, manifest = scored
    m = run_filter(FilterConfig(tables=cfg.tables, out=str(tmp_path / "f"), scorer="saev", top_fraction=0.5))
    assert m["n_kept"] == 60 and m["splits"] == {"sft": 60, "dpo": 60} and m["sae_id"] == manifest["sae_id"]
    con = connect(cfg.tables)
    top = con.execute("SELECT sample_id FROM scores WHERE scorer = 'saev' ORDER BY score DESC, sample_id LIMIT 60").fetchall()
    kept = pq.read_table(tmp_path / "f" / "selected.parquet")
    assert kept.column("sample_id").to_pylist() == [r[0] for r in top]
    # the rebuilt rows are the source rows of the kept ids
    q = con.execute("SELECT question FROM samples WHERE sample_id = $s", {"s": top[0][0]}).fetchone()[0]
    sft, dpo = load_filtered(tmp_path / "f", "sft"), load_filtered(tmp_path / "f", "dpo")
    assert sft[0]["prompt"][0]["content"][1]["text"] == q and sft[0]["images"][0].size == (32, 32)
    assert dpo.column_names == ["images", "prompt", "chosen", "rejected"]

    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    proc = AutoProcessor.from_pretrained(world_dir / "model")
    common = dict(max_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True, max_length=None, save_strategy="no")
    for trainer, conf, data in ((SFTTrainer, SFTConfig, sft), (DPOTrainer, DPOConfig, dpo)):
        model = AutoModelForImageTextToText.from_pretrained(world_dir / "model")
        before = [p.detach().clone() for p in model.parameters()]
        t = trainer(model=model, args=conf(output_dir=str(tmp_path / "trl"), **common), train_dataset=data.select(range(8)),
                    processing_class=proc)
        out = t.train()
        assert math.isfinite(out.training_loss) and t.state.global_step == 1
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_filter_folder_is_a_hub_dataset_repository(scored, tmp_path):
    """The card's configs make `load_dataset(<folder>, "sft" | "dpo")` load the right rows with images,
    and name the scorer, the fraction and the SAE; `saev export-dataset` prints the push call."""
    import datasets
    import yaml

    base, cfg, manifest = scored
    folder = tmp_path / "saev-50"
    m = run_filter(FilterConfig(tables=cfg.tables, out=str(folder), scorer="saev", top_fraction=0.5))
    card = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert {c["config_name"]: c.get("default", False) for c in card["configs"]} == {"sft": True, "dpo": False}
    assert card["saev"]["scorer"] == "saev" and card["saev"]["top_fraction"] == 0.5 and card["saev"]["sae_id"] == m["sae_id"]
    info = {i["config_name"]: i for i in card["dataset_info"]}
    assert info["dpo"]["splits"][0]["num_examples"] == m["splits"]["dpo"] == 60
    assert [f["name"] for f in info["sft"]["features"]] == ["images", "prompt", "completion"]
    for split, columns in (("sft", ["images", "prompt", "completion"]), ("dpo", ["images", "prompt", "chosen", "rejected"])):
        hub = datasets.load_dataset(str(folder), split, split="train")
        ours = load_filtered(folder, split)
        assert hub.column_names == columns and len(hub) == 60
        assert hub[0]["prompt"] == ours[0]["prompt"] and hub[59][columns[-1]] == ours[59][columns[-1]]
        assert hub[0]["images"][0].size == (32, 32) and list(hub[0]["images"][0].getdata()) == list(ours[0]["images"][0].getdata())

    out = CliRunner().invoke(app, ["export-dataset", str(folder), "--repo-id", "me/saev-50"])
    assert out.exit_code == 0, out.output
    said = json.loads(out.stdout)
    assert said["configs"] == ["sft", "dpo"]
    assert said["upload"] == f"huggingface_hub.upload_folder(folder_path='{folder}', repo_id='me/saev-50', repo_type='dataset')"
    assert 'load_dataset("me/saev-50", "dpo", split="train")' in (folder / "README.md").read_text()
    bad = CliRunner().invoke(app, ["export-dataset", str(tmp_path)])
    assert bad.exit_code != 0 and "not a `saev filter` output folder" in bad.output


def test_filter_top_k_per_dataset_and_errors(scored, tmp_path):
    base, cfg, manifest = scored
    run_scoring(cfg.model_copy(update={"dataset_name": "demo-copy"}))  # a second dataset appears in the same views
    m = run_filter(FilterConfig(tables=cfg.tables, out=str(tmp_path / "k"), scorer="l0", top_k=5, per_dataset=True))
    assert m["kept_per_dataset"] == {"demo-copy": 5, "demo-rlaif": 5}
    m = run_filter(FilterConfig(tables=cfg.tables, out=str(tmp_path / "g"), scorer="saev", top_k=7, datasets=["demo-copy"]))
    assert m["kept_per_dataset"] == {"demo-copy": 7}
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['nope'\] .* valid datasets: \['demo-copy', 'demo-rlaif'\]"):
        run_filter(FilterConfig(tables=cfg.tables, out=str(tmp_path / "x"), top_k=5, datasets=["nope"]))
    with pytest.raises(ValueError, match="exactly one of top_fraction and top_k"):
        FilterConfig(out="x", top_k=3, top_fraction=0.5)
    with pytest.raises(FileNotFoundError, match="no 'dpo' split"):
        load_filtered(tmp_path / "nothing", "dpo")


def test_ranks_by_hand():
    """rank 1 = highest, ties by sample_id; percentile = share scoring <= it. One definition for the
    scores table and the filter, which keeps rank <= k (or <= ceil(fraction * n)) per partition."""
    import pandas as pd

    from saev_core.tables.schema import ranks

    rank, pct = ranks([0.5, 2.5, 2.5, 1.0], ["d", "c", "b", "a"])
    assert rank.tolist() == [4, 2, 1, 3] and pct.tolist() == [0.25, 1.0, 1.0, 0.5]
    from saev_core.alignment.filter import select_top

    scored = pd.DataFrame({"dataset": ["x", "x", "x", "y", "y"], "sample_id": ["a", "b", "c", "a", "b"], "score": [1.0, 3.0, 2.0, 0.0, 5.0]})
    per = select_top(scored, FilterConfig(out="o", top_fraction=0.5, per_dataset=True)).to_pylist()
    assert [(r["dataset"], r["sample_id"], r["rank"]) for r in per] == [("x", "b", 1), ("x", "c", 2), ("y", "b", 1)]  # ceil(1.5), ceil(1)
    pooled = select_top(scored, FilterConfig(out="o", top_k=2)).to_pylist()
    assert [(r["dataset"], r["sample_id"], r["rank"]) for r in pooled] == [("x", "b", 2), ("y", "b", 1)]


def test_auroc_and_top_fraction_by_hand():
    # positives 0.4, 0.8; negatives 0.1, 0.35: pairs won 4/4 -> 1.0; swap 0.4 <-> 0.35 -> 3/4
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 0, 1], bool)) == 1.0
    assert auroc(np.array([0.1, 0.35, 0.4, 0.8]), np.array([0, 1, 0, 1], bool)) == 0.75
    assert auroc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0], bool)) == 0.5  # ties count half
    assert math.isnan(auroc(np.array([1.0]), np.array([True])))
    assert top_fraction_clean(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 1], bool), 0.5) == 0.5


def test_quality_table_and_cli(scored, world_dir, tmp_path):
    base, cfg, manifest = scored
    rows = scorer_quality(open_views(cfg.tables), world_dir / "labels.parquet", "demo-rlaif", manifest["sae_id"])
    assert {r["scorer"] for r in rows} == set(default_scorers())
    assert all(0 <= r["auroc"] <= 1 and "auroc_swapped_image" in r for r in rows)
    assert render_quality(rows).startswith("| scorer | auroc |")

    runner = CliRunner()
    tables = str(tmp_path / "cli-tables")
    res = runner.invoke(app, ["score", "--activations", str(base / "dump"), "--sae", str(base / "sae"), "--tables", tables,
                              "--scorer", "l0", "--scorer", "saev", "--set", "progress=false"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_samples"] == 120
    res = runner.invoke(app, ["filter", "--tables", tables, "--scorer", "l0", "--top-k", "3", "--out", str(tmp_path / "cf")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["kept"] == 3
    res = runner.invoke(app, ["eval-scores", "--tables", tables, "--labels", str(world_dir / "labels.parquet")])
    assert res.exit_code == 0 and "| saev |" in res.output and "| random |" not in res.output
    res = runner.invoke(app, ["filter", "--tables", tables, "--scorer", "random", "--top-k", "3", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no 'random' scores" in res.output


def test_sae_id_is_the_content_and_follows_a_rewritten_checkpoint(tmp_path):
    import os

    from saev_core.sae.checkpoint import sae_id_of

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "cfg.json").write_text('{"d_in": 4}')
        (d / "sae_weights.safetensors").write_bytes(b"weights-1")
    assert sae_id_of(a) == sae_id_of(b)  # same content, another path
    first = sae_id_of(a)
    (a / "sae_weights.safetensors").write_bytes(b"weights-2")
    os.utime(a / "sae_weights.safetensors", ns=(1, 1))  # same size as before; the mtime tells
    assert sae_id_of(a) != first

"""A store can move: keys hash identities, records keep root-relative paths, old stores migrate."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from saev_core.cli.app import app
from saev_core.io import portable, read_json, resolve_recorded, write_json
from saev_core.store.artifacts import ArtifactStore, OldStoreError, stage_key

DUMP = "0123456789abcdef"


def test_keys_hash_the_identity_not_paths_or_runtime_fields():
    train = {"architecture": "topk", "k": 16, "activations": f"data/artifacts/dump/{DUMP}", "device": "auto", "reader_workers": 2}
    key = stage_key("train", train, [DUMP])
    moved = {**train, "activations": f"/mnt/other/disk/store/dump/{DUMP}", "device": "cpu", "reader_workers": 8}
    assert stage_key("train", moved, [DUMP]) == key
    assert stage_key("train", {**train, "activations": f"s3://bucket/saev/dump/{DUMP}"}, [DUMP]) == key
    assert stage_key("train", {**train, "k": 32}, [DUMP]) != key  # a field that changes the SAE
    assert stage_key("train", {**train, "activations": "runs/my-dump"}, [DUMP]) != key  # a dump outside any store counts by its path
    dump = {"model": "m", "dataset": {"path": "d.parquet"}, "layer": 0, "batch_size": 8, "progress": True}
    assert stage_key("dump", dump, []) == stage_key("dump", {**dump, "batch_size": 64, "progress": False}, [])


def test_portable_paths_by_hand():
    assert portable({"a": [f"/x/y/dump/{DUMP}/activations", f"file://st/train/{DUMP}"], "b": "llava-hf/llava-1.5-7b-hf", "c": 3}) == \
        {"a": [f"dump/{DUMP}/activations", f"train/{DUMP}"], "b": "llava-hf/llava-1.5-7b-hf", "c": 3}
    assert portable(f"dump/{DUMP}x") == f"dump/{DUMP}x"  # 17 hex digits: not a key


def test_a_recorded_path_is_found_again_where_its_store_moved(tmp_path):
    """Manifests keep the paths of their build (the dump's model and dataset, the SAE's activations,
    a score's SAE); a reader finds a store path again below the store that holds it now."""
    store = tmp_path / "disk2" / "store"
    model = store / "prepare" / DUMP / "model"
    model.mkdir(parents=True)
    reader = store / "train" / "fedcba9876543210"
    reader.mkdir(parents=True)
    built = f"/old/disk/store/prepare/{DUMP}/model"
    assert resolve_recorded(built, reader) == str(model)
    assert resolve_recorded(f"../../prepare/{DUMP}/model", tmp_path / "elsewhere") == f"../../prepare/{DUMP}/model"  # no store above
    assert resolve_recorded(str(model), tmp_path) == str(model)  # where it is, as written
    assert resolve_recorded("llava-hf/llava-1.5-7b-hf", reader) == "llava-hf/llava-1.5-7b-hf"  # a hub id
    assert resolve_recorded("/gone/my-dump", reader) == "/gone/my-dump"  # outside any store: left for the reader to report
    assert resolve_recorded(None, reader) is None


def test_a_copied_store_reads_its_own_model_dataset_and_sae(tmp_path):
    """The demo world lives in the store (``prepare/<key>``): a copy's dump opens with the copy's
    model and dataset, and its scoring manifests name the copy's SAE and activations."""
    import numpy as np

    from saev_core.activations.shards import ActivationDump
    from saev_core.tables.schema import manifest_path, scoring_manifest
    from tests.test_train import fake_dump

    old, new = tmp_path / "old" / "store", tmp_path / "new-disk" / "store"
    world, dump, sae = f"prepare/{DUMP}", "dump/1111111111111111", "train/2222222222222222"
    fake_dump(old / dump, 4, [np.zeros((8, 4), np.float32)], version=2)
    m = read_json(old / dump / "manifest.json")
    write_json(old / dump / "manifest.json", {**m, "model": str(old / world / "model"), "dataset": {"path": str(old / world / "d.parquet")}})
    for made in (old / world / "model", old / sae / "sae"):
        made.mkdir(parents=True)
    (old / world / "d.parquet").write_bytes(b"")
    write_json(manifest_path(old / "tables", "d", "s1"), {"sae": str(old / sae / "sae"), "activations": str(old / dump),
                                                          "source_dataset": {"path": str(old / world / "d.parquet")}})
    shutil.copytree(old, new)
    shutil.rmtree(old)
    opened = ActivationDump.open(new / dump)
    assert opened.manifest["model"] == str(new / world / "model") and opened.manifest["dataset"]["path"] == str(new / world / "d.parquet")
    scored = scoring_manifest(new / "tables", "d", "s1")
    assert (scored["sae"], scored["activations"], scored["source_dataset"]["path"]) == \
        (str(new / sae / "sae"), str(new / dump), str(new / world / "d.parquet"))


def _two_stages(store: ArtifactStore, built: list) -> tuple[dict, dict]:
    def make_dump(out):
        built.append("dump")
        (out / "rows.txt").write_text("rows")
        return {"n": 1}

    def make_train(out):
        built.append("train")
        return {"sae": str(out / "sae"), "activations": dump["path"]}
    dump = store.run("dump", {"model": "m", "batch_size": 4}, [], make_dump)
    train = store.run("train", {"k": 1, "activations": dump["path"], "device": "cpu"}, [dump["key"]], make_train)
    return dump, train


def test_a_moved_store_is_found_whole_at_its_new_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built: list[str] = []
    dump, train = _two_stages(ArtifactStore.at("here/store"), built)  # a working-directory-relative root, as `make run`'s
    assert built == ["dump", "train"]
    rec = read_json(tmp_path / "here/store/train" / train["key"] / "store.json")
    assert rec["path"] == f"train/{train['key']}" and rec["config"]["activations"] == f"dump/{dump['key']}"
    shutil.copytree(tmp_path / "here/store", tmp_path / "there/moved")
    shutil.rmtree(tmp_path / "here")
    monkeypatch.chdir(tmp_path / "there")
    moved = ArtifactStore.at(tmp_path / "there/moved")
    dump2, train2 = _two_stages(moved, built)
    assert built == ["dump", "train"], "nothing rebuilt after the move"
    assert (dump2["key"], train2["key"]) == (dump["key"], train["key"])
    assert train2["path"] == str(tmp_path / "there/moved/train" / train["key"])
    assert train2["manifest"]["activations"] == dump2["path"] == str(tmp_path / "there/moved/dump" / dump["key"])
    assert (tmp_path / "there/moved/dump" / dump["key"] / "rows.txt").exists()


def test_an_old_store_is_named_in_one_line_and_migrated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data/artifacts"
    old_dump, old_train = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
    # what saev 0.2 wrote: keys over the raw config, paths relative to the working directory
    for stage, key, created, cfg, up, manifest in (
            ("dump", old_dump, "2026-01-01", {"model": "m", "batch_size": 4}, [], {"n": 1}),
            ("dump", "cccccccccccccccc", "2026-02-01", {"model": "m", "batch_size": 8}, [], {"n": 1}),  # the same dump, another batch size
            ("train", old_train, "2026-01-02", {"k": 1, "activations": f"data/artifacts/dump/{old_dump}", "device": "cpu"}, [old_dump],
             {"activations": f"data/artifacts/dump/{old_dump}"})):
        (root / stage / key).mkdir(parents=True)
        write_json(root / stage / key / "manifest.json", manifest)
        write_json(root / stage / key / "store.json", {"stage": stage, "key": key, "path": f"data/artifacts/{stage}/{key}", "created": created,
                                                        "config": cfg, "upstream": up, "metrics": {}, "manifest": manifest})
    store = ArtifactStore.at("data/artifacts")
    with pytest.raises(OldStoreError, match=r"saev artifacts migrate --root data/artifacts"):
        store.list()
    listed = CliRunner().invoke(app, ["artifacts", "--root", "data/artifacts"])
    assert listed.exit_code == 2 and listed.output.count("\n") == 1 and "saev artifacts migrate" in listed.output
    res = CliRunner().invoke(app, ["artifacts", "migrate", "--root", "data/artifacts"])
    assert res.exit_code == 0, res.output
    new_dump = stage_key("dump", {"model": "m"}, [])
    new_train = stage_key("train", {"k": 1, "activations": f"dump/{new_dump}"}, [new_dump])
    assert f"{old_train} -> {new_train}" in res.output
    assert sorted(r["key"] for r in store.list()) == sorted([new_dump, new_train])  # the two dumps are one artifact now
    assert read_json(root / "dump" / new_dump / "store.json")["created"].startswith("2026-02")  # the newer one stayed
    assert json.loads((root / "train" / new_train / "manifest.json").read_text())["activations"] == f"data/artifacts/dump/{new_dump}"
    built: list[str] = []
    _two_stages(store, built)
    assert built == [], "the migrated store is reused as it is"
    assert "needs no migration" in CliRunner().invoke(app, ["artifacts", "migrate", "--root", "data/artifacts"]).output

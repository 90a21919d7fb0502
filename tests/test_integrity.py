"""Data integrity across stages: duplicates are found in the whole dataset whatever the shard
layout, scoring reads the dump's own sample list, and a partition is visible only when complete."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from saev_core.activations.data import DatasetSpec, iter_samples, open_dataset
from saev_core.activations.dump import DumpConfig, run_dump
from saev_core.tables.query import connect
from saev_core.scoring.run import ScoreConfig, run_scoring
from saev_core.tables.schema import TABLES
from saev_core.sae.train import TrainConfig, train_sae

UNIQUE = 24
# Duplicates of earlier rows, some a shard or more away from their first occurrence, some repeated.
DUPLICATES = [0, 5, 23, 1, 1, 7, 12, 0, 20, 3, 15, 22, 9, 9, 2, 18]


@pytest.fixture(scope="module")
def with_duplicates(tmp_path_factory, world_dir, world):
    source = pq.read_table(world_dir / world["datasets"]["demo-rlaif"]["path"]).slice(0, UNIQUE)
    order = list(range(12)) + DUPLICATES[:6] + list(range(12, UNIQUE)) + DUPLICATES[6:]
    path = tmp_path_factory.mktemp("dups") / "train.parquet"
    pq.write_table(source.take(order), path)
    return path, order


def _dump(path, out, bundle, world_dir, **kw) -> dict:
    cfg = DumpConfig(model=str(world_dir / "model"), dataset=DatasetSpec(path=str(path)), layer=0, out=str(out), batch_size=4,
                     device="cpu", progress=False, **kw)
    return cfg, run_dump(cfg, bundle=bundle)


def _read(out, table: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / table).glob("*.parquet"))])


@pytest.mark.parametrize("samples_per_shard", [5, 16, 64])
def test_the_first_occurrence_is_kept_whatever_the_shards(with_duplicates, bundle, world_dir, tmp_path, samples_per_shard):
    path, order = with_duplicates
    first = {}
    for row, src in enumerate(order):
        first.setdefault(src, row)
    _, m = _dump(path, tmp_path / "d", bundle, world_dir, samples_per_shard=samples_per_shard)
    assert m["n_samples"] == UNIQUE and m["n_rejected"] == len(DUPLICATES)
    kept = _read(tmp_path / "d", "samples")
    assert sorted(kept.column("row_index").to_pylist()) == sorted(first.values())  # the first rows, not later copies
    assert len(set(kept.column("sample_id").to_pylist())) == UNIQUE
    rejected = _read(tmp_path / "d", "rejected").to_pylist()
    expected = {(row, f"duplicate of row {first[src]}") for row, src in enumerate(order) if first[src] != row}
    assert {(r["row_index"], r["reason"]) for r in rejected} == expected


def test_a_resumed_dump_dedupes_like_a_straight_one(with_duplicates, bundle, world_dir, tmp_path):
    path, _ = with_duplicates
    cfg, straight = _dump(path, tmp_path / "straight", bundle, world_dir, samples_per_shard=8)
    resumed_cfg = cfg.model_copy(update={"out": str(tmp_path / "resumed")})
    run_dump(resumed_cfg, bundle=bundle, shards=[3, 1])  # later shards first, as a crashed or distributed run leaves them
    resumed = run_dump(resumed_cfg, bundle=bundle)
    assert resumed["n_samples"] == straight["n_samples"] == UNIQUE
    for table in ("samples", "rejected"):
        assert _read(tmp_path / "resumed", table).equals(_read(tmp_path / "straight", table))


@pytest.fixture(scope="module")
def dumped_with_duplicates(with_duplicates, bundle, world_dir, tmp_path_factory):
    path, _ = with_duplicates
    base = tmp_path_factory.mktemp("dups-scored")
    _dump(path, base / "dump", bundle, world_dir, samples_per_shard=16)
    train_sae(TrainConfig(activations=str(base / "dump"), out=str(base / "sae"), architecture="topk", k=4, expansion_factor=2,
                          batch_size=128, total_tokens=128 * 10, scale_batches=2, buffer_rows=2048, eval_rows=0, device="cpu",
                          progress=False))
    return base


def _score(base, tables: str, **kw) -> dict:
    return run_scoring(ScoreConfig(activations=str(base / "dump"), sae=str(base / "sae"), tables=str(base / tables), top=10,
                                   per_side=2, reference_samples=UNIQUE, device="cpu", progress=False, **kw))


def _rows_by_id(path) -> dict[str, int]:
    spec = DatasetSpec(path=str(path))
    out = {}
    for s in iter_samples(open_dataset(spec), spec):
        out.setdefault(s.sample_id, s.row_index)
    return out


def test_a_dataset_with_duplicates_scores(dumped_with_duplicates, with_duplicates):
    path, _ = with_duplicates
    m = _score(dumped_with_duplicates, "tables")
    assert m["n_samples"] == UNIQUE
    samples = pq.read_table(next((dumped_with_duplicates / "tables" / "samples").glob("*/*.parquet")))
    assert dict(zip(samples.column("sample_id").to_pylist(), samples.column("row_index").to_pylist())) == \
        {sid: row for sid, row in _rows_by_id(path).items() if sid in set(samples.column("sample_id").to_pylist())}


@pytest.mark.parametrize("change", ["reversed", "appended"])
def test_a_reordered_or_extended_source_still_scores(dumped_with_duplicates, with_duplicates, tmp_path, change):
    """Samples are found by id: their row indices follow the source as it is now."""
    path, _ = with_duplicates
    import json

    table = pq.read_table(path)
    changed = table.take(list(reversed(range(table.num_rows)))) if change == "reversed" else pa.concat_tables([table, table.slice(0, 3)])
    moved = tmp_path / "train.parquet"
    pq.write_table(changed, moved)
    dump = dumped_with_duplicates / "dump"
    manifest = json.loads((dump / "manifest.json").read_text())
    copy = tmp_path / "dump"
    import shutil

    shutil.copytree(dump, copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "dataset": {**manifest["dataset"], "path": str(moved)}}))
    m = run_scoring(ScoreConfig(activations=str(copy), sae=str(dumped_with_duplicates / "sae"), tables=str(tmp_path / "tables"),
                                top=10, per_side=2, reference_samples=UNIQUE, device="cpu", progress=False))
    assert m["n_samples"] == UNIQUE
    samples = pq.read_table(next((tmp_path / "tables" / "samples").glob("*/*.parquet")))
    now = _rows_by_id(moved)
    assert all(now[sid] == row for sid, row in zip(samples.column("sample_id").to_pylist(), samples.column("row_index").to_pylist()))


def test_a_failed_scoring_run_leaves_nothing_a_view_reads(dumped_with_duplicates, with_duplicates, tmp_path):
    """The source lost a dumped sample: scoring fails by name, and no table shows a partial partition."""
    import json
    import shutil

    path, order = with_duplicates
    table = pq.read_table(path)
    lost = tmp_path / "train.parquet"
    pq.write_table(table.filter(pc.invert(pc.equal(pa.array(range(table.num_rows)), 4))), lost)  # row 4 occurs once
    copy = tmp_path / "dump"
    shutil.copytree(dumped_with_duplicates / "dump", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "dataset": {**manifest["dataset"], "path": str(lost)}}))
    with pytest.raises(ValueError, match=f"no longer holds 1 of the {UNIQUE} dumped samples"):
        run_scoring(ScoreConfig(activations=str(copy), sae=str(dumped_with_duplicates / "sae"), tables=str(tmp_path / "tables"),
                                top=10, per_side=2, reference_samples=UNIQUE, device="cpu", progress=False))
    assert any((tmp_path / "tables" / "sample_features").rglob("*.parquet"))  # per-shard work was written...
    con = connect(tmp_path / "tables")
    for name in TABLES:  # ...but nothing is visible
        assert con.sql(f"SELECT count(*) FROM {name}").fetchall() == [(0,)], name


def _empty_inputs(tmp_path, world_dir, world) -> dict:
    good = pq.read_table(world_dir / world["datasets"]["demo-rlaif"]["path"])
    cases = {}
    (tmp_path / "empty.jsonl").write_text("")
    cases["empty.jsonl"] = ("holds no rows",)
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    cases["blank.jsonl"] = ("holds no rows",)
    pq.write_table(good.slice(0, 0), tmp_path / "zero-rows.parquet")
    cases["zero-rows.parquet"] = ("holds no rows",)
    (tmp_path / "zero-bytes.parquet").write_bytes(b"")
    cases["zero-bytes.parquet"] = ("holds no rows",)
    (tmp_path / "no-data").mkdir()
    (tmp_path / "no-data" / "README.txt").write_text("nothing here")
    cases["no-data"] = ("no .parquet, .jsonl or .json files",)
    (tmp_path / "garbage.parquet").write_bytes(b"not a parquet file at all")
    cases["garbage.parquet"] = ("cannot read the dataset", "as parquet")
    return cases


def test_empty_and_unreadable_datasets_fail_in_one_line(tmp_path, world_dir, world):
    from typer.testing import CliRunner

    from saev_core.cli.app import app

    for name, says in _empty_inputs(tmp_path, world_dir, world).items():
        out = tmp_path / f"dump-{name}"
        r = CliRunner().invoke(app, ["dump", "--model", str(world_dir / "model"), "--dataset", str(tmp_path / name), "--layer", "0",
                                     "--out", str(out), "--device", "cpu"])
        assert r.exit_code == 2, (name, r.output)
        lines = [line for line in r.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and all(s in lines[0] for s in says) and "Traceback" not in r.output, (name, r.output)
        assert not out.exists(), name


def test_training_on_a_dump_with_no_usable_rows_says_so(tmp_path):
    from typer.testing import CliRunner

    from saev_core.cli.app import app
    from saev_core.io import write_json

    dump = tmp_path / "dump"
    (dump / "activations").mkdir(parents=True)
    write_json(dump / "manifest.json", {"kind": "saev.activations", "d_model": 8, "model": "m", "layer": 0, "hook": "h",
                                        "dataset": {"path": "none"}, "n_samples": 0, "n_rejected": 12, "shards": [],
                                        "rows": {"image": 0, "text": 0, "special": 0, "total": 0}})
    r = CliRunner().invoke(app, ["train", "--activations", str(dump), "--out", str(tmp_path / "sae"), "--device", "cpu"])
    assert r.exit_code == 2 and "has no image+text rows to train on (0 samples kept, 12 rejected" in r.output, r.output


def test_a_killed_dumps_temporary_files_are_removed_on_rerun(with_duplicates, bundle, world_dir, tmp_path):
    path, _ = with_duplicates
    cfg, _ = _dump(path, tmp_path / "d", bundle, world_dir, samples_per_shard=16)
    final = tmp_path / "d" / "activations" / "shard-00001.parquet"
    final.unlink()  # as if the run was killed while writing shard 1...
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = final.parent / f".{final.name}.tmp-{dead}-0a1b2c3d"
    stale.write_bytes(b"half a shard")
    live = final.parent / f".{final.name}.tmp-{__import__('os').getpid()}-0a1b2c3d"  # a writer still at work
    live.write_bytes(b"in progress")
    run_dump(cfg, bundle=bundle)
    assert final.exists() and not stale.exists() and live.exists()
    live.unlink()


BUILD = """
import os, sys, time
from pathlib import Path
from saev_core.store.artifacts import ArtifactStore
root = Path(sys.argv[1])
def build(out):
    with open(root / "builds.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(2)  # long enough that the other processes arrive while this one builds
    return {"pid": os.getpid()}
print(ArtifactStore.at(root).run("demo-stage", {"a": 1}, [], build)["manifest"]["pid"])
"""


def test_concurrent_runs_of_one_artifact_build_it_once(tmp_path):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path)], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    pids = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    builds = (tmp_path / "builds.log").read_text().split()
    assert len(builds) == 1 and set(pids) == set(builds), (builds, pids)


def _waiting_on(lock, pid: int) -> bool:
    """True while process ``pid`` is blocked on the flock of ``lock`` (a "->" line of /proc/locks)."""
    inode = f":{lock.stat().st_ino} "
    return any("->" in line and f" {pid} " in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_a_scoring_waits_while_another_holds_the_partition(dumped_with_duplicates, tmp_path):
    """A `saev score --overwrite` of a (dataset, SAE) another writer holds waits for it, then
    commits one complete partition (without the lock it removed the other's work directory)."""
    import json
    import subprocess
    import sys
    import time

    from saev_core.sae.checkpoint import resolve_sae_dir, sae_id_of
    from saev_core.io import file_lock
    from saev_core.tables.schema import lock_path, manifest_path

    dump = dumped_with_duplicates / "dump"
    dataset = json.loads((dump / "manifest.json").read_text())["dataset_name"]
    sae_id = sae_id_of(resolve_sae_dir(str(dumped_with_duplicates / "sae")))
    tables = tmp_path / "tables"
    lock = lock_path(tables, dataset, sae_id)
    cmd = [sys.executable, "-m", "saev_core", "score", "--activations", str(dump), "--sae", str(dumped_with_duplicates / "sae"),
           "--tables", str(tables), "--reference-samples", str(UNIQUE), "--device", "cpu", "--overwrite"]
    with file_lock(lock):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None and not _waiting_on(lock, proc.pid):
            time.sleep(0.2)
        assert proc.poll() is None, f"the scoring did not wait for the partition lock:\n{proc.stdout.read()}"
        assert not manifest_path(tables, dataset, sae_id).exists()
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    con = connect(tables)
    rows = con.sql("SELECT scorer, count(*), count(DISTINCT sample_id) FROM scores GROUP BY scorer").fetchall()
    assert rows and all(n == distinct == UNIQUE for _, n, distinct in rows), rows
    assert con.sql("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchall() == [(UNIQUE, UNIQUE)]

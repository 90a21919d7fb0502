"""A content-addressed artifact store: every pipeline stage's output lives in
``<root>/<stage>/<key>/`` where key = hash(the stage config's identity + upstream keys +
saev_core version).

The same config with the same inputs always lands in the same directory, so a finished stage is
recognised and skipped, and changing a config changes that stage's key and, through the upstream
keys, the keys of everything downstream, and nothing upstream. A stage is finished when its
``store.json`` record exists; it is written last, atomically, after the stage's own manifest, so
a crash mid-stage leaves no record and the stage (which resumes its own partial files) reruns.
Feature tables are the exception to one-directory-per-key: they are shared, hive-partitioned by
dataset and content-addressed SAE id, under ``<root>/tables`` so one DuckDB view covers them all.

A store can move: keys hash what changes a result (runtime fields such as the device or a batch
size are left out, and a path into a store counts as ``<stage>/<key>/...``, never where the store
lies), and records keep paths relative to the root, resolved against wherever it is read from.

The root may be an fsspec URL (``s3://bucket/saev``): the store is then a local cache
(``saev_core.store.remote``) that pulls a stage's inputs before it runs and pushes its directory after,
``store.json`` last, plus any new table files. A finished stage found remotely is pulled, not rerun.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from saev_core import __version__
from saev_core.configs import STAGE_RUNTIME
from saev_core.io import REF, file_lock, is_url, map_strings, portable, read_json, store_ref, write_json
from saev_core.store.remote import Mirror
from saev_core.tables.schema import PARTITIONS, partition_dir, partitions

SAE_TABLES = [t for t, keys in PARTITIONS.items() if "sae_id" in keys]  # `samples` is per dataset, shared

RECORD = "store.json"
STORE_FORMAT = 2  # 2: identity keys and root-relative records; 1 (no "format" in a record): raw-config keys, working-directory paths


def identity_of(stage: str, config: dict) -> dict:
    """The part of a stage config that changes its result: runtime fields (``STAGE_RUNTIME``) out,
    store paths portable."""
    drop = STAGE_RUNTIME.get(stage, set())
    return portable({k: v for k, v in config.items() if k not in drop})


def stage_key(stage: str, config: dict, upstream: list[str]) -> str:
    """hash(stage, the config's identity, upstream keys, saev_core version): 16 hex digits."""
    blob = json.dumps({"stage": stage, "config": identity_of(stage, config), "upstream": sorted(upstream), "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class OldStoreError(ValueError):
    """A store written before keys hashed identities (records hold working-directory paths)."""


def builder() -> dict:
    """Who built an artifact: the host and process, so a run can tell its own work from work
    that a concurrent run (which it waited for) did."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def built_here(record: dict) -> bool:
    """True if this process built the artifact of ``record`` (not a concurrent run or an earlier one)."""
    return record.get("built_by") == builder()


@dataclass(frozen=True)
class ArtifactStore:
    root: Path  # local: the store itself, or the cache of a remote one
    remote: Mirror | None = None

    @classmethod
    def at(cls, root: str | Path, cache: str | Path | None = None) -> "ArtifactStore":
        """A local directory, or an fsspec URL mirrored in ``cache`` (default: ``remote.default_cache``)."""
        if is_url(root):
            mirror = Mirror(str(root), cache)
            return cls(mirror.local, mirror)
        return cls(Path(str(root).removeprefix("file://")))

    @property
    def location(self) -> str:
        """What to hand another task or machine: the URL of a remote store, else the local root."""
        return self.remote.url if self.remote else str(self.root)

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / RECORD).exists() or (
            self.remote is not None and self.remote.exists(f"{stage}/{key}/{RECORD}"))

    def stage_of(self, key: str) -> str | None:
        """The stage of a finished artifact, here or on the remote; None if there is none."""
        found = [p.parent.parent.name for p in self.root.glob(f"*/{key}/{RECORD}")] or \
            ([rel.split("/")[0] for rel in self.remote.glob(f"*/{key}/{RECORD}")] if self.remote is not None else [])
        return found[0] if found else None

    def record(self, stage: str, key: str) -> dict:
        local = self.path(stage, key) / RECORD
        rec = read_json(local) if local.exists() or self.remote is None else self.remote.read_json(f"{stage}/{key}/{RECORD}")
        return self.localize(self._checked(rec))

    def _checked(self, rec: dict) -> dict:
        if rec.get("format") != STORE_FORMAT:
            raise OldStoreError(f"the artifact store {self.location} was written by an older saev, whose keys hash working-directory "
                                f"paths; run `saev artifacts migrate --root {self.location}` once (or use a new root)")
        return rec

    def localize(self, value):
        """The inverse of ``portable`` for this store: each ``<stage>/<key>[/...]`` becomes a path below the root."""
        return map_strings(value, lambda s: str(self.root / s) if REF.fullmatch(s) else s)

    def relocated(self, value):
        """Records made under another root (a Prefect cache hit from before a move) pointed at this one."""
        return self.localize(portable(value))

    # -- remote mirroring (no-ops on a local store) -----------------------------------------
    def fetch(self, stage: str, key: str) -> Path:
        """The artifact's local directory, pulled from the remote first where it is not here."""
        if self.remote is not None and not (self.path(stage, key) / RECORD).exists():
            self.remote.pull(f"{stage}/{key}", last=RECORD)
        return self.path(stage, key)

    def pull_tables(self) -> None:
        if self.remote is not None:
            self.remote.pull("tables")

    def push_tables(self) -> None:
        if self.remote is not None:
            self.remote.push("tables")

    def push_partial(self, stage: str, key: str) -> None:
        """Upload an unfinished stage's files (a shard done on this machine) for whoever finishes it."""
        if self.remote is not None:
            self.remote.push(f"{stage}/{key}")

    @staticmethod
    def _artifact_of(path: str) -> tuple[str, str] | None:
        """(stage, key) of the artifact a path (or ``<stage>/<key>`` reference) lies in, wherever
        its store lies; None for any other path."""
        ref = store_ref(path)
        return tuple(ref.split("/")[:2]) if ref else None

    def _paths_in(self, config) -> Iterator[tuple[str, str]]:
        """(stage, key) of every store path in a config (the tables excepted)."""
        todo = [config]
        while todo:
            v = todo.pop()
            if isinstance(v, dict):
                todo.extend(v.values())
            elif isinstance(v, (list, tuple)):
                todo.extend(v)
            elif isinstance(v, str) and "/" in v and (found := self._artifact_of(v)):
                yield found

    def pull_inputs(self, config: dict, upstream: list[str]) -> None:
        """Fetch every artifact a stage may read: its upstream keys and the store paths in its config,
        and theirs in turn (a filter reads the source dataset its dump's config names)."""
        if self.remote is None:
            return
        todo = [(None, k) for k in upstream] + list(self._paths_in(config))
        seen: set[str] = set()
        while todo:
            stage, key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            if stage is None and (stage := self.stage_of(key)) is None:
                continue
            if not self.done(stage, key):
                continue
            self.fetch(stage, key)
            rec = self.record(stage, key)
            todo += [(None, k) for k in rec.get("upstream") or []] + list(self._paths_in(rec.get("config")))

    def current(self, stage: str, key: str, valid: Callable[[dict], bool] | None = None) -> bool:
        """Finished, and (for stages writing into shared places) still what ``valid`` expects."""
        return self.done(stage, key) and (valid is None or valid(self.record(stage, key)))

    def run(self, stage: str, config: dict, upstream: list[str], fn: Callable[[Path], dict],
            summary: Callable[[dict], dict] | None = None, valid: Callable[[dict], bool] | None = None) -> dict:
        """Run ``fn(out_dir)`` unless (stage, key) is finished and valid; record and return its manifest.

        Concurrent runs of one (stage, key) on this machine take turns: the first builds it, the
        others find it finished."""
        return self.run_many(stage, [config], upstream, lambda todo: [fn(todo[0][1])],
                             summary=summary, valid=valid)[0]

    def run_many(self, stage: str, configs: list[dict], upstream: list[str], fn: Callable[[list[tuple[dict, Path]]], list[dict]],
                 summary: Callable[[dict], dict] | None = None, valid: Callable[[dict], bool] | None = None) -> list[dict]:
        """``run`` for several artifacts of one stage built together: ``fn`` gets (config, out dir) of
        the unfinished ones and returns their manifests (e.g. SAEs trained in one pass over a dump).
        Each is keyed, locked and recorded exactly as ``run`` would."""
        keys = [stage_key(stage, c, upstream) for c in configs]
        with contextlib.ExitStack() as locks:
            # one builder per artifact, the others wait and reuse it; outside the stage directories, which users and gc list
            for key in sorted(set(keys)):  # a fixed order: two passes over overlapping keys cannot deadlock
                locks.enter_context(file_lock(self.root / ".locks" / f"{stage}-{key}.lock"))
            self.pull_tables()  # shared: a partition's manifest decides whether a score artifact is current
            todo = [i for i, key in enumerate(keys) if not self.current(stage, key, valid)]
            for i in set(range(len(keys))) - set(todo):
                self.fetch(stage, keys[i])
            built: dict[int, dict] = {}
            if todo:
                outs = [self.path(stage, keys[i]) for i in todo]
                for i, out in zip(todo, outs):
                    if self.remote is not None:
                        self.pull_inputs(configs[i], upstream)
                        self.remote.pull(f"{stage}/{keys[i]}")  # partial work: shards finished elsewhere, or before a crash
                    out.mkdir(parents=True, exist_ok=True)
                t0 = time.time()
                manifests = fn([(configs[i], out) for i, out in zip(todo, outs)])
                seconds = round(time.time() - t0, 2)
                for i, out, manifest in zip(todo, outs, manifests):
                    rec = {"format": STORE_FORMAT, "stage": stage, "key": keys[i], "path": f"{stage}/{keys[i]}",
                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": seconds,
                           "config": portable(configs[i]), "upstream": upstream, "saev_core_version": __version__,
                           "metrics": summary(manifest) if summary else {}, "manifest": portable(manifest), "built_by": builder()}
                    write_json(out / RECORD, rec)
                    built[i] = self.localize(rec)
                if self.remote is not None:
                    self.push_tables()
                    for i in todo:
                        self.remote.push(f"{stage}/{keys[i]}", last=RECORD)
            return [built[i] if i in built else self.record(stage, key) for i, key in enumerate(keys)]

    def newest(self, stage: str) -> dict | None:
        """The record of the newest finished artifact of ``stage``, if any."""
        found = [r for r in self.list() if r["stage"] == stage]
        return self.record(stage, found[-1]["key"]) if found else None

    def latest_world(self) -> Path | None:
        """The newest demo world the pipeline prepared (its model, datasets, labels, held-out split)."""
        world = self.newest("prepare")
        return self.fetch("prepare", world["key"]) if world else None

    def list(self) -> list[dict]:
        """Every finished artifact, here or on the remote, oldest first (without the full manifests)."""
        records = {f.parent.name: read_json(f) for f in sorted(self.root.glob(f"*/*/{RECORD}"))}
        if self.remote is not None:
            for rel in self.remote.glob(f"*/*/{RECORD}"):
                if rel.split("/")[1] not in records:
                    records[rel.split("/")[1]] = self.remote.read_json(rel)
        rows = []
        for rec in records.values():
            rec = self.localize(self._checked(rec))
            rows.append({k: rec.get(k) for k in ("stage", "key", "created", "seconds", "upstream", "metrics", "path")}
                        | {"config": _short(rec.get("config", {}))})
        return sorted(rows, key=lambda r: r["created"] or "")

    def listing(self) -> str:
        """``list`` as text: stage, key, created and metrics, then the config summary, per artifact."""
        lines = []
        for r in self.list():
            metrics = ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in (r["metrics"] or {}).items())
            lines.append(f"{r['stage']:<10} {r['key']}  {r['created']}  {metrics}\n{'':<10} {r['config']}")
        return "\n".join(lines) or f"no artifacts under {self.root}"

    def gc(self, keep: list[str] | None = None, dry_run: bool = False) -> list[str]:
        """Remove unfinished directories and artifacts that no kept artifact depends on, and the
        feature-table partitions scored with an SAE that goes (SAEs from outside the store stay).

        ``keep``: keys to keep with everything upstream of them; default: every finished
        artifact that is not upstream of another is a root and kept, so only unfinished or
        orphaned directories go.
        """
        self.pull_tables()
        records = {r["key"]: r for r in self.list()}
        if keep is None:
            upstream_of_some = {u for r in records.values() for u in r["upstream"] or []}
            keep = [k for k in records if k not in upstream_of_some]
        unknown = sorted(set(keep) - set(records))
        if unknown:
            raise ValueError(f"unknown artifact keys {unknown}; `saev artifacts` lists them")
        alive: set[str] = set()
        todo = list(keep)
        while todo:
            k = todo.pop()
            if k in alive or k not in records:
                continue
            alive.add(k)
            todo.extend(records[k]["upstream"] or [])
        removed = []
        dead = [d for d in sorted(p for p in self.root.glob("*/*") if p.is_dir() and p.parent.name != "tables")
                if d.name not in alive and not d.name.startswith(".")]  # dot-dirs are writes in progress
        gone = [str(p.relative_to(self.root)) for p in self._partitions_outside(alive, set(records))]
        for d in dead:
            removed.append(str(d))
            if not dry_run:
                shutil.rmtree(d)
        for rel in gone:
            removed.append(str(self.root / rel))
            if not dry_run:
                shutil.rmtree(self.root / rel) if (self.root / rel).is_dir() else (self.root / rel).unlink()
                if self.remote is not None:
                    self.remote.remove(rel)
        if self.remote is not None:
            dirs = {"/".join(rel.split("/")[:2]) for rel in self.remote.glob("*/*/*") if not rel.startswith("tables/")}
            for rel in sorted(dirs):
                if rel.split("/")[1] not in alive:
                    removed.append(self.remote.remote(rel))
                    if not dry_run:
                        self.remote.remove(rel)
        return removed

    def _partitions_outside(self, alive: set[str], known: set[str]) -> list[Path]:
        """Table partitions (and their manifests) scored with an SAE of this store (one of the
        ``known`` artifacts, here or only on the remote) whose artifact is not ``alive``."""
        out = []
        for dataset, sae_id, f in partitions(self.tables):
            sae = read_json(f).get("sae")
            found = self._artifact_of(sae) if sae else None
            if found is None or found[1] in alive or found[1] not in known:
                continue
            out += [p for table in SAE_TABLES if (p := partition_dir(self.tables, table, dataset, sae_id)).exists()] + [f]
        return out


_KEY = re.compile(r"[0-9a-f]{16}")


def _rekeyed_text(text: str, keys: dict[str, str]) -> str:
    """``text`` with every old artifact key in it replaced by the new one."""
    return _KEY.sub(lambda m: keys.get(m.group(0), m.group(0)), text)


def _rekeyed(value, keys: dict[str, str]):
    """``value`` with every old artifact key in its strings replaced by the new one."""
    return map_strings(value, lambda s: _rekeyed_text(s, keys))


def migrate(root: str | Path, dry_run: bool = False) -> dict[str, tuple[str, str]]:
    """Re-key a local store written before STORE_FORMAT 2: each artifact gets its identity key
    (upstream first, so references follow), its directory is renamed, the JSON files that name
    old keys are rewritten, and records become root-relative. Returns {old key: (stage, new key)}.
    Artifacts whose configs differed only in runtime fields now share a key: the newest stays."""
    root = Path(root)
    if is_url(str(root)):
        raise ValueError("migrate a local copy of a remote store (`saev artifacts migrate --root <dir>`), then upload it in place of the old one")
    old = {f.parent.name: read_json(f) for f in sorted(root.glob(f"*/*/{RECORD}"))}
    old = {k: r for k, r in old.items() if r.get("format") != STORE_FORMAT}
    store = ArtifactStore(root)
    order: list[str] = []  # every artifact after the ones its config or upstream names
    seen: set[str] = set()

    def visit(key: str) -> None:
        if key in seen or key not in old:
            return
        seen.add(key)
        for dep in [*(old[key].get("upstream") or []), *(k for _, k in store._paths_in(old[key].get("config")))]:
            visit(dep)
        order.append(key)
    for key in sorted(old, key=lambda k: old[k].get("created") or ""):
        visit(key)
    keys: dict[str, str] = {}
    moves: dict[str, tuple[str, str]] = {}
    for key in order:
        rec = old[key]
        keys[key] = stage_key(rec["stage"], _rekeyed(rec["config"], keys), [keys.get(u, u) for u in rec.get("upstream") or []])
        moves[key] = (rec["stage"], keys[key])
    if dry_run:
        return moves
    newest: dict[tuple[str, str], str] = {}
    for key in sorted(order, key=lambda k: old[k].get("created") or ""):
        newest[moves[key]] = key
    changed = {k: v for k, v in keys.items() if k != v}
    for f in root.rglob("*.json") if changed else []:
        if f.name != RECORD and ".locks" not in f.parts:
            text = f.read_text()
            if (new := _rekeyed_text(text, changed)) != text:
                write_json(f, json.loads(new))
    for key in order:
        stage, new_key = moves[key]
        src, dst = root / stage / key, root / stage / new_key
        if newest[(stage, new_key)] != key:  # an older twin of the artifact that keeps the key
            shutil.rmtree(src)
            continue
        rec = old[key]
        rec = {**rec, "format": STORE_FORMAT, "key": new_key, "path": f"{stage}/{new_key}",
               "config": portable(_rekeyed(rec["config"], keys)), "upstream": [keys.get(u, u) for u in rec.get("upstream") or []],
               "manifest": portable(_rekeyed(rec.get("manifest"), keys))}
        if src != dst:
            if dst.exists():
                shutil.rmtree(dst)
            src.rename(dst)
        write_json(dst / RECORD, rec)
    return moves


def _short(config: dict, width: int = 80) -> str:
    text = ", ".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, dict))
    return text if len(text) <= width else text[: width - 1] + "…"

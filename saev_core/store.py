"""A content-addressed artifact store: every pipeline stage's output lives in
``<root>/<stage>/<key>/`` where key = hash(stage config + upstream keys + saev_core version).

The same config with the same inputs always lands in the same directory, so a finished stage is
recognised and skipped, and changing a config changes that stage's key and, through the upstream
keys, the keys of everything downstream, and nothing upstream. A stage is finished when its
``store.json`` record exists; it is written last, atomically, after the stage's own manifest, so
a crash mid-stage leaves no record and the stage (which resumes its own partial files) reruns.
Feature tables are the exception to one-directory-per-key: they are shared, hive-partitioned by
dataset and content-addressed SAE id, under ``<root>/tables`` so one DuckDB view covers them all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from saev_core import __version__
from saev_core.io import read_json, write_json

RECORD = "store.json"


def stage_key(stage: str, config: dict, upstream: list[str]) -> str:
    """hash(stage, config, upstream keys, saev_core version): 16 hex digits."""
    blob = json.dumps({"stage": stage, "config": config, "upstream": sorted(upstream), "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ArtifactStore:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "ArtifactStore":
        return cls(Path(root))

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / RECORD).exists()

    def record(self, stage: str, key: str) -> dict:
        return read_json(self.path(stage, key) / RECORD)

    def current(self, stage: str, key: str, valid: Callable[[dict], bool] | None = None) -> bool:
        """Finished, and (for stages writing into shared places) still what ``valid`` expects."""
        return self.done(stage, key) and (valid is None or valid(self.record(stage, key)))

    def run(self, stage: str, config: dict, upstream: list[str], fn: Callable[[Path], dict],
            summary: Callable[[dict], dict] | None = None, valid: Callable[[dict], bool] | None = None) -> dict:
        """Run ``fn(out_dir)`` unless (stage, key) is finished and valid; record and return its manifest."""
        key = stage_key(stage, config, upstream)
        out = self.path(stage, key)
        if self.current(stage, key, valid):
            return self.record(stage, key)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        manifest = fn(out)
        rec = {"stage": stage, "key": key, "path": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "seconds": round(time.time() - t0, 2), "config": config, "upstream": upstream,
               "saev_core_version": __version__, "metrics": summary(manifest) if summary else {}, "manifest": manifest}
        write_json(out / RECORD, rec)
        return rec

    def latest_world(self) -> Path | None:
        """The newest demo world the pipeline prepared (its model, datasets, labels, held-out split)."""
        worlds = [r for r in self.list() if r["stage"] == "prepare"]
        return Path(worlds[-1]["path"]) if worlds else None

    def list(self) -> list[dict]:
        """Every finished artifact, oldest first (without the full manifests)."""
        rows = []
        for rec_file in sorted(self.root.glob(f"*/*/{RECORD}")):
            rec = read_json(rec_file)
            rows.append({k: rec.get(k) for k in ("stage", "key", "created", "seconds", "upstream", "metrics", "path")}
                        | {"config": _short(rec.get("config", {}))})
        return sorted(rows, key=lambda r: r["created"] or "")

    def gc(self, keep: list[str] | None = None, dry_run: bool = False) -> list[str]:
        """Remove unfinished directories and artifacts that no kept artifact depends on.

        ``keep``: keys to keep with everything upstream of them; default: every finished
        artifact that is not upstream of another is a root and kept, so only unfinished or
        orphaned directories go.
        """
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
        for d in sorted(p for p in self.root.glob("*/*") if p.is_dir() and p.parent.name != "tables"):
            if d.name not in alive and not d.name.startswith("."):  # dot-dirs are writes in progress
                removed.append(str(d))
                if not dry_run:
                    shutil.rmtree(d)
        return removed


def _short(config: dict, width: int = 80) -> str:
    text = ", ".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, dict))
    return text if len(text) <= width else text[: width - 1] + "…"

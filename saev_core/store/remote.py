"""Mirror a local directory with an fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory://``...).

Stages read and write local files (torch, pyarrow and DuckDB want real paths, and object stores
have no atomic directory rename), so an artifact store on an object store is a local cache kept in
step with the remote at stage boundaries: pull what a stage reads, push what it wrote. Each file
is one object, so a reader sees a file whole or not at all; the order of pushes (a stage's
``store.json`` last) makes the remote record the commit point, as the local one is.

Which files changed is tracked in ``<cache>/.mirror.json``: for a pulled or pushed file, the remote
object's version (its ETag on S3, else size and modification time) and the local file's size and mtime. A file is
pulled again only when its remote version changed, and pushed again only when the local file did.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from saev_core.io import atomic_path, write_json

INDEX = ".mirror.json"


def default_cache(url: str) -> Path:
    """``$SAEV_CACHE/artifacts/<hash of url>`` (default ``~/.cache/saev``); records hold
    root-relative paths, so every machine may keep its cache where it likes."""
    base = Path(os.environ.get("SAEV_CACHE", "~/.cache/saev")).expanduser()
    return base / "artifacts" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]


class Mirror:
    """A local directory and the remote URL it mirrors."""

    def __init__(self, url: str, local: str | Path | None = None, storage_options: dict | None = None):
        import fsspec

        self.url = url.rstrip("/")
        self.local = Path(local) if local is not None else default_cache(self.url)
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as e:
            scheme = self.url.split("://", 1)[0]
            raise ValueError(f"cannot open artifact store {self.url!r} ({e}); install the fsspec backend for "
                             f"{scheme}:// (s3fs for s3://, gcsfs for gs://, adlfs for az://)") from None
        self.base = self.base.rstrip("/")
        self._lock = threading.Lock()

    # -- the change index -------------------------------------------------------------------
    def _index(self) -> dict:
        f = self.local / INDEX
        return json.loads(f.read_text()) if f.exists() else {}

    def _note(self, versions: dict[str, str]) -> None:
        """Record synced files. Concurrent writers may lose an entry: that only costs a re-transfer."""
        if not versions:
            return
        with self._lock:
            index = self._index()
            for rel, version in versions.items():
                st = (self.local / rel).stat()
                index[rel] = {"version": version, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            write_json(self.local / INDEX, index)

    @staticmethod
    def _version(info: dict) -> str:
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
        when = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("created")
        return str(tag) if tag else f"{info.get('size')}@{when}"

    # -- remote queries ---------------------------------------------------------------------
    def remote(self, rel: str) -> str:
        return f"{self.base}/{rel}".rstrip("/")

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.remote(rel))

    def read_json(self, rel: str) -> dict:
        with self.fs.open(self.remote(rel), "r") as f:
            return json.load(f)

    def glob(self, pattern: str) -> list[str]:
        """Relative paths of remote files matching ``pattern`` (relative to the root)."""
        self.fs.invalidate_cache()
        return sorted(p[len(self.base) + 1:] for p in self.fs.glob(self.remote(pattern)))

    def _remote_files(self, rel: str) -> dict[str, dict]:
        root = self.remote(rel)
        if not self.fs.exists(root):
            return {}
        if self.fs.isfile(root):
            return {rel: self.fs.info(root)}
        return {p[len(self.base) + 1:]: info for p, info in self.fs.find(root, detail=True).items()
                if info.get("type", "file") == "file"}

    # -- sync -------------------------------------------------------------------------------
    def pull(self, rel: str, last: str | None = None) -> list[str]:
        """Download the remote files under ``rel`` that are new or changed; ``last`` (a file name) is
        written after all others. Returns the relative paths downloaded."""
        self.fs.invalidate_cache()  # another machine may have written since this process last listed
        index = self._index()
        remote = self._remote_files(rel)
        todo = [r for r, info in remote.items()
                if index.get(r, {}).get("version") != self._version(info) or not (self.local / r).exists()]
        todo.sort(key=lambda r: Path(r).name == last)
        for r in todo:
            with atomic_path(self.local / r) as tmp:
                self.fs.get_file(self.remote(r), str(tmp))
        self._note({r: self._version(remote[r]) for r in todo})
        return todo

    def push(self, rel: str, last: str | None = None, delete: bool = False) -> list[str]:
        """Upload the local files under ``rel`` that are new or changed since the last sync;
        ``last`` goes up after all others. ``delete`` also removes remote files under ``rel`` that
        are gone locally (a partition rewritten with fewer parts). Returns what was uploaded."""
        src = self.local / rel
        if not src.exists():
            return []
        index = self._index()
        # dot-names are writes in progress (saev_core.io's temporary siblings) and the index itself
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()
                                             and not any(part.startswith(".") for part in p.relative_to(src).parts)]
        self.fs.invalidate_cache()
        there = self._remote_files(rel)  # one listing, not one request per file
        todo = []
        for p in files:
            r = p.relative_to(self.local).as_posix()
            st, seen = p.stat(), index.get(r)
            if seen is None or seen["size"] != st.st_size or seen["mtime_ns"] != st.st_mtime_ns or r not in there:
                todo.append(r)
        todo.sort(key=lambda r: Path(r).name == last)
        for r in todo:
            self.fs.makedirs(self.remote(r).rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(self.local / r), self.remote(r))
        self._note({r: self._version(self.fs.info(self.remote(r))) for r in todo})
        if delete:
            local = {p.relative_to(self.local).as_posix() for p in files}
            for r in sorted(set(there) - local):
                self.fs.rm_file(self.remote(r))
        return todo

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.remote(rel)):
            self.fs.rm(self.remote(rel), recursive=True)

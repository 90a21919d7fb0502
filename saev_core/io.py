"""Atomic file and directory writes: readers see either the old content or the new, never half."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def _tmp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_tmp(path: str | Path) -> int:
    """Delete temporary siblings of ``path`` left by a killed writer (its pid is gone), before
    ``path`` is written again; a live writer's file is left alone. Returns how many went."""
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` (replacing any old one) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block, waiting for it.

    Concurrent writers of one artifact or partition (several flow runs, two `saev score`
    processes) take turns: the second sees the first's finished work instead of redoing or
    interleaving it. ``flock`` covers every process on one machine and local file systems; the
    kernel releases it when a holder dies, so a killed run never leaves a stale lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


# a path into an artifact store, wherever the store lies: group 1 is <stage>/<key>[/...] below its root
_IN_STORE = re.compile(r"(?:^|.*/)([a-z][a-z0-9-]*/[0-9a-f]{16}(?:/.*)?)$")
REF = re.compile(r"[a-z][a-z0-9-]*/[0-9a-f]{16}(?:/.*)?")


def is_url(location: str | os.PathLike) -> bool:
    """An fsspec URL other than a plain local path (``file://`` counts as local)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def map_strings(value, fn):
    """``value`` (JSON-like: dicts, lists, tuples) with ``fn`` applied to every string in it."""
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def store_ref(path: str) -> str | None:
    """``<stage>/<key>[/...]`` of a path into an artifact store, wherever the store lies; None otherwise."""
    m = _IN_STORE.match(path.removeprefix("file://")) if "/" in path else None
    return m.group(1) if m else None


def resolve_recorded(path: str | None, near: str | Path) -> str | None:
    """A path a manifest recorded when its artifact was built, found again after the store moved
    (copied to another disk, mounted elsewhere, read from another directory): as written where it
    exists; else, for a path into an artifact store (``<stage>/<key>/...``), the same place below
    the nearest ancestor of ``near`` (the reader's own artifact) that holds it."""
    if not path or is_url(path) or Path(path).exists():
        return path
    ref = store_ref(str(path))
    if ref is None:
        return path
    here = Path(near).absolute()
    for root in (here, *here.parents):
        if (root / ref).exists():
            return str(root / ref)
    return path


def resolve_recorded_dataset(spec, near: str | Path):
    """A recorded dataset spec (a dict with ``path``) with its path found again as ``resolve_recorded`` finds it."""
    return {**spec, "path": resolve_recorded(spec.get("path"), near)} if isinstance(spec, dict) else spec


def portable(value):
    """``value`` with every path into an artifact store written as ``<stage>/<key>[/...]``, relative
    to its root (dicts and lists throughout): what keys hash and records keep, so moving a store,
    or reading it from another directory or machine, changes neither."""
    return map_strings(value, lambda s: store_ref(s) or s)


def claim_output_dir(out: str | Path, identity: dict, overwrite: bool, what: str) -> Path:
    """Make ``out`` the home of a stage run with config ``identity`` (kept in ``config.json``).

    The same config resumes in place; another config, or a directory that is not a saev output,
    is refused unless ``overwrite`` (a different saev run is then removed first).
    """
    out = Path(out)
    cfg_file = out / "config.json"
    if cfg_file.exists():
        if portable(read_json(cfg_file)) == portable(identity):  # a store path counts wherever the store lies
            return out
        if not overwrite:
            raise ValueError(f"{out} holds a {what} made with a different config; choose another --out or pass --overwrite to replace it")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not a saev {what}; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_json(cfg_file, identity)
    return out

"""Dataset loading through ``datasets``: local Parquet / JSON Lines / saved datasets or a hub
id, mapped onto saev's canonical fields, with a content-derived ``sample_id`` per row.

Canonical fields: ``image``, ``question`` and, depending on the format, ``answer`` (SFT),
``chosen``/``rejected`` (RLAIF-V style) or ``response_1``/``response_2``/``better_response_id``
(Align-Anything style, turned into chosen/rejected here). Rows that cannot be used (missing or
corrupt image, empty question, bad preference id) come back as :class:`Rejection`, never as an
exception, so one bad row never stops a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import datasets
from PIL import Image

from saev_core.configs import DatasetSpec

FORMATS: dict[str, tuple[str, ...]] = {
    "rlaif_v": ("image", "question", "chosen", "rejected"),
    "align_anything": ("image", "question", "response_1", "response_2", "better_response_id"),
    "sft": ("image", "question", "answer"),
}


@dataclass
class Sample:
    sample_id: str
    row_index: int
    image: Image.Image
    image_ref: str
    question: str
    answer: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    @property
    def response(self) -> str | None:
        """The response a prompt+response dump appends: the SFT answer or the chosen answer."""
        return self.answer if self.answer is not None else self.chosen


@dataclass
class Rejection:
    sample_id: str
    row_index: int
    reason: str


def _is_local(path: str) -> bool:
    return os.path.exists(path) or path.startswith((".", "/", "~")) or Path(path).suffix in {".parquet", ".jsonl", ".json"}


def open_dataset(spec: DatasetSpec) -> datasets.Dataset:
    """Open one split as an Arrow-backed (memory-mapped) ``datasets.Dataset``."""
    path = os.path.expanduser(spec.path)
    if _is_local(path):
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"dataset path {p} does not exist; pass a local Parquet/JSON Lines file or directory, a save_to_disk directory, or a hub id")
        if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if spec.split not in ds:
                    raise ValueError(f"split {spec.split!r} not in saved dataset {p}; available: {sorted(ds)}")
                ds = ds[spec.split]
        else:
            files = sorted(p.rglob("*")) if p.is_dir() else [p]
            parquet = [f for f in files if f.suffix == ".parquet"]
            jsonl = [f for f in files if f.suffix in {".jsonl", ".json"}]
            if not parquet and not jsonl:
                raise ValueError(f"no .parquet, .jsonl or .json files under {p}; point --dataset at the data files or their directory")
            kind, found = ("parquet", parquet) if parquet else ("json", jsonl)
            data = [f for f in found if _holds_rows(f, kind)]
            if not data:
                raise ValueError(f"the dataset at {p} holds no rows: its {len(found)} {kind} file(s) are empty")
            try:
                ds = datasets.load_dataset(kind, data_files=[str(f) for f in data], split="train")
            except Exception as e:  # datasets/pyarrow raise many types for an unreadable file
                raise ValueError(f"cannot read the dataset at {p} as {kind} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                 "check that the files are valid") from None
    else:
        ds = datasets.load_dataset(spec.path, name=spec.subset, split=spec.split)
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"the dataset {spec.display_name} ({spec.path}) has no rows; nothing to do")
    return ds


def _holds_rows(path: Path, kind: str) -> bool:
    """False for a data file with no rows: zero bytes, blank JSON Lines, a zero-row Parquet file."""
    if path.stat().st_size == 0:
        return False
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_metadata(path).num_rows > 0
        except Exception:
            return True  # unreadable: let the reader name the problem
    with open(path, "rb") as f:
        return any(line.strip() for line in f)


def resolve_columns(spec: DatasetSpec, column_names: list[str]) -> tuple[str, dict[str, str]]:
    """The format in use and the canonical-field -> source-column mapping, validated.

    Fails before any work with a message naming the missing columns and the ones present.
    """
    unknown = set(spec.columns) - {f for fields in FORMATS.values() for f in fields}
    if unknown:
        raise ValueError(f"column mapping names unknown fields {sorted(unknown)}; canonical fields are {sorted({f for fs in FORMATS.values() for f in fs})}")
    fmt = spec.format
    if fmt == "auto":
        present = set(column_names)
        mapped = lambda f: spec.columns.get(f, f) in present  # noqa: E731
        for candidate in ("align_anything", "rlaif_v", "sft"):
            if all(mapped(f) for f in FORMATS[candidate]):
                fmt = candidate
                break
        else:
            raise ValueError(
                f"cannot detect the dataset format from columns {sorted(column_names)}; "
                f"expected one of {FORMATS} (set `format` and map columns with `columns`, e.g. columns={{'question': 'prompt'}})"
            )
    mapping = {f: spec.columns.get(f, f) for f in FORMATS[fmt]}
    missing = {f: c for f, c in mapping.items() if c not in column_names}
    if missing:
        raise ValueError(
            f"format {fmt!r} needs columns {missing} (canonical field -> source column) that the dataset lacks; "
            f"available columns: {sorted(column_names)}. Fix the `columns` mapping."
        )
    return fmt, mapping


def sample_id(image_key: bytes, question: str, responses: tuple[str | None, ...]) -> str:
    """Stable id from content (image bytes, question, responses): order and position independent."""
    h = hashlib.sha256(b"saev-sample-v1\0")
    h.update(hashlib.sha256(image_key).digest())
    for part in (question, *responses):
        h.update(b"\0" + (part if part is not None else "\x00none").encode())
    return h.hexdigest()[:16]


def _image_payload(value, image_root: Path | None) -> tuple[bytes | None, str, str | None]:
    """(raw bytes or None, reference string, error or None) for any image cell layout."""
    if value is None:
        return None, "", "image is missing (null)"
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue(), "<in-memory>", None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], value.get("path") or "<bytes>", None
        value = value.get("path")
        if not value:
            return None, "", "image cell has neither bytes nor path"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "<bytes>", None
    if isinstance(value, str):
        p = Path(os.path.expanduser(value))
        if not p.is_absolute() and image_root is not None:
            p = image_root / p
        try:
            return p.read_bytes(), str(p), None
        except OSError as e:
            return None, str(p), f"image file unreadable: {p} ({e.strerror or e})"
    return None, "", f"unsupported image cell of type {type(value).__name__}"


def _decode(raw: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img.convert("RGB")


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):  # conversational cells: keep the text of the turns
        value = " ".join(str(t.get("content", t)) if isinstance(t, dict) else str(t) for t in value)
    return str(value)


def _rows(ds: datasets.Dataset, spec: DatasetSpec, start: int, stop: int | None):
    """(row index, sample id, image bytes, image ref, error, question, response fields, preference error)
    per row, without decoding the image."""
    fmt, mapping = resolve_columns(spec, ds.column_names)
    img_col = mapping["image"]
    if isinstance(ds.features.get(img_col), datasets.Image):
        ds = ds.cast_column(img_col, datasets.Image(decode=False))
    root = Path(spec.image_root).expanduser() if spec.image_root else _default_image_root(spec)
    stop = len(ds) if stop is None else min(stop, len(ds))
    view = ds.select_columns(list(dict.fromkeys(mapping.values())))
    for offset, row in enumerate(view.select(range(start, stop)) if stop > start else []):
        idx = start + offset
        raw, ref, err = _image_payload(row[img_col], root)
        question = _text(row[mapping["question"]])
        fields: dict[str, str | None] = {}
        bad_pref = None
        if fmt == "sft":
            fields["answer"] = _text(row[mapping["answer"]])
        elif fmt == "rlaif_v":
            fields["chosen"], fields["rejected"] = _text(row[mapping["chosen"]]), _text(row[mapping["rejected"]])
        else:
            r1, r2 = _text(row[mapping["response_1"]]), _text(row[mapping["response_2"]])
            better = row[mapping["better_response_id"]]
            if str(better) not in {"1", "2"}:
                bad_pref = f"better_response_id must be 1 or 2, got {better!r}"
            fields["chosen"], fields["rejected"] = (r1, r2) if str(better) == "1" else (r2, r1)
        sid = sample_id(raw if raw is not None else ref.encode(), question or "", tuple(fields.values()))
        yield idx, sid, raw, ref, err, question, fields, bad_pref


def first_rows(ds: datasets.Dataset, spec: DatasetSpec) -> dict[str, int]:
    """Each sample id's first row in the whole dataset (content hashes only, no image decoded):
    a later row with the same id is a duplicate, whatever shard either falls in."""
    first: dict[str, int] = {}
    for idx, sid, *_ in _rows(ds, spec, 0, None):
        first.setdefault(sid, idx)
    return first


def iter_samples(ds: datasets.Dataset, spec: DatasetSpec, start: int = 0, stop: int | None = None) -> Iterator[Sample | Rejection]:
    """Rows ``start:stop`` as canonical samples or rejections (never raises on a bad row)."""
    for idx, sid, raw, ref, err, question, fields, bad_pref in _rows(ds, spec, start, stop):
        if err is None:
            try:
                image = _decode(raw)
            except Exception as e:  # PIL raises many types for corrupt data
                err = f"image cannot be decoded ({type(e).__name__}: {e})"
        if err is None and not (question or "").strip():
            err = "question is empty"
        if err is None and bad_pref:
            err = bad_pref
        if err is not None:
            yield Rejection(sid, idx, err)
            continue
        yield Sample(sid, idx, image, ref, question, **fields)


def find_samples(spec: DatasetSpec, rows: dict[str, int], ds: datasets.Dataset | None = None) -> dict[str, Sample]:
    """The source's samples for ``rows`` (sample_id -> the row a dump or the tables recorded), in
    source order: each is read at its recorded row; one whose row no longer holds it (the source
    was re-ordered, or grew, since) is found by id in one scan, at its first valid row. Ids the
    source lost are left out, for the caller to report."""
    ds = ds if ds is not None else open_dataset(spec)
    at = sorted({r for r in rows.values() if 0 <= r < len(ds)})
    found = {}
    for s in iter_samples(ds.select(at), spec):  # numbered within the selection: at[i] is the source row
        if isinstance(s, Sample) and rows.get(s.sample_id) == at[s.row_index]:
            found[s.sample_id] = dataclasses.replace(s, row_index=at[s.row_index])
    lost = set(rows) - set(found)
    if lost:
        for s in iter_samples(ds, spec):
            if isinstance(s, Sample) and s.sample_id in lost and s.sample_id not in found:
                found[s.sample_id] = s
    return dict(sorted(found.items(), key=lambda item: item[1].row_index))


def _default_image_root(spec: DatasetSpec) -> Path | None:
    p = Path(os.path.expanduser(spec.path))
    if p.is_file():
        return p.parent
    if p.is_dir():
        return p
    return None


def batched(items, size: int) -> Iterator[list]:
    """Lists of ``size`` consecutive items (the last may be shorter): itertools.batched before 3.12."""
    buf = []
    for it in items:
        buf.append(it)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf

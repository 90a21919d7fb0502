"""Dataset loading: three public schemas, three storage layouts, content-derived ids,
column mapping, and bad rows recorded instead of raised."""

from __future__ import annotations

import io
import json

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from saev_core.activations.data import DatasetSpec, Rejection, Sample, iter_samples, open_dataset, resolve_columns


def load(spec: DatasetSpec):
    return list(iter_samples(open_dataset(spec), spec))


def _png(color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo_specs(world_dir, world):
    return {name: DatasetSpec(path=str(world_dir / info["path"])) for name, info in world["datasets"].items()}


def test_public_schemas_load_and_agree(demo_specs):
    rlaif = load(demo_specs["demo-rlaif"])
    aa = load(demo_specs["demo-align-anything"])
    sft = load(demo_specs["demo-sft"])
    assert all(isinstance(s, Sample) for s in rlaif + aa + sft)
    assert resolve_columns(demo_specs["demo-align-anything"], ["image", "question", "response_1", "response_2", "better_response_id"])[0] == "align_anything"
    # Align-Anything's better_response_id turns into the same chosen/rejected as the RLAIF-V copy.
    assert [(s.question, s.chosen, s.rejected) for s in aa] == [(s.question, s.chosen, s.rejected) for s in rlaif]
    assert [s.answer for s in sft] == [s.chosen for s in rlaif]
    assert rlaif[0].image.mode == "RGB" and rlaif[0].image.size == (32, 32)
    assert demo_specs["demo-rlaif"].display_name == "demo-rlaif"


def test_sample_ids_are_content_derived_across_layouts(tmp_path, demo_specs):
    src = pq.read_table(demo_specs["demo-rlaif"].path).to_pylist()[:20]
    ids = [s.sample_id for s in load(DatasetSpec(path=demo_specs["demo-rlaif"].path, limit=20))]
    # JSON Lines with relative image paths
    (tmp_path / "img").mkdir()
    with open(tmp_path / "rows.jsonl", "w") as f:
        for i, row in enumerate(src):
            (tmp_path / "img" / f"{i}.png").write_bytes(row["image"]["bytes"])
            f.write(json.dumps({"image": f"img/{i}.png", "question": row["question"], "chosen": row["chosen"], "rejected": row["rejected"]}) + "\n")
    assert [s.sample_id for s in load(DatasetSpec(path=str(tmp_path / "rows.jsonl")))] == ids
    # save_to_disk, re-ordered and with rows appended: every original row keeps its id.
    shuffled = datasets.Dataset.from_list(src[::-1] + [{**src[0], "question": "what color is the square ?"}],
                                          features=datasets.load_dataset("parquet", data_files=demo_specs["demo-rlaif"].path, split="train").features)
    shuffled.save_to_disk(str(tmp_path / "saved"))
    got = load(DatasetSpec(path=str(tmp_path / "saved")))
    assert [s.sample_id for s in got[:20]] == ids[::-1]
    assert got[20].sample_id not in ids
    assert len(set(ids)) == 20


def test_column_mapping(tmp_path):
    rows = [{"picture": {"bytes": _png(), "path": None}, "prompt": "what color is it ?", "good": "red", "bad": "blue"}]
    datasets.Dataset.from_list(rows).cast_column("picture", datasets.Image()).to_parquet(str(tmp_path / "x.parquet"))
    spec = DatasetSpec(path=str(tmp_path / "x.parquet"), format="rlaif_v",
                       columns={"image": "picture", "question": "prompt", "chosen": "good", "rejected": "bad"})
    (s,) = load(spec)
    assert (s.question, s.chosen, s.rejected) == ("what color is it ?", "red", "blue")
    bad = spec.model_copy(update={"columns": {"image": "picture", "question": "text"}})
    with pytest.raises(ValueError, match=r"needs columns .*'question': 'text'.*lacks; available columns: \['bad', 'good', 'picture', 'prompt'\]"):
        resolve_columns(bad, ["picture", "prompt", "good", "bad"])
    with pytest.raises(ValueError, match="cannot detect the dataset format"):
        resolve_columns(DatasetSpec(path="x"), ["picture", "prompt"])
    with pytest.raises(ValueError, match="unknown fields"):
        resolve_columns(DatasetSpec(path="x", columns={"caption": "c"}), ["picture"])


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows = [
        {"image": "ok.png", "question": "q ?", "response_1": "a", "response_2": "b", "better_response_id": 2},
        {"image": "missing.png", "question": "q ?", "response_1": "a", "response_2": "b", "better_response_id": 1},
        {"image": "corrupt.png", "question": "q ?", "response_1": "a", "response_2": "b", "better_response_id": 1},
        {"image": "ok.png", "question": "   ", "response_1": "a", "response_2": "b", "better_response_id": 1},
        {"image": "ok.png", "question": "q2 ?", "response_1": "a", "response_2": "b", "better_response_id": 3},
    ]
    with open(tmp_path / "d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    out = load(DatasetSpec(path=str(tmp_path / "d.jsonl")))
    assert isinstance(out[0], Sample) and (out[0].chosen, out[0].rejected) == ("b", "a")
    reasons = {o.row_index: o.reason for o in out if isinstance(o, Rejection)}
    assert set(reasons) == {1, 2, 3, 4}
    assert "unreadable" in reasons[1] and "missing.png" in reasons[1]
    assert "cannot be decoded" in reasons[2]
    assert reasons[3] == "question is empty"
    assert "better_response_id must be 1 or 2" in reasons[4]
    assert all(len(o.sample_id) == 16 for o in out)


def test_missing_local_path_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(DatasetSpec(path=str(tmp_path / "nope.parquet")))

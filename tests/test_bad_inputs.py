"""A corpus of bad inputs, built here from the demo world, through dump -> score -> filter: every
bad row is recorded with its reason, and every good row survives to the filtered TRL dataset."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from saev_core.activations.data import DatasetSpec
from saev_core.activations.dump import DumpConfig, run_dump
from saev_core.alignment.filter import FilterConfig, load_filtered, run_filter
from saev_core.tables.query import connect
from saev_core.scoring.run import ScoreConfig, run_scoring
from saev_core.sae.train import TrainConfig, train_sae


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def build_corpus(root, world_dir, world) -> tuple[list[dict], dict[int, str]]:
    """An Align-Anything JSON Lines file with image files beside it. Returns the rows written and
    {row index: expected reason} for the rows that must be rejected; every other row is good."""
    src = pq.read_table(world_dir / world["datasets"]["demo-align-anything"]["path"]).to_pylist()
    demo = [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB") for r in src[:12]]
    files = {
        "jpeg.jpg": _encoded(demo[0], "JPEG"),
        "png.png": _encoded(demo[1], "PNG"),
        "rgba.png": _encoded(demo[2].convert("RGBA"), "PNG"),
        "grey.png": _encoded(demo[3].convert("L"), "PNG"),
        "one-pixel.png": _encoded(Image.new("RGB", (1, 1), (120, 30, 200)), "PNG"),
        "corrupt.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4,
        "truncated.png": _encoded(demo[4], "PNG")[:300],
    }
    for i in range(5, 12):
        files[f"good-{i}.png"] = _encoded(demo[i], "PNG")
    (root / "images").mkdir()
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)

    def row(i: int, image: str, question: str | None = None, better=None) -> dict:
        s = src[i]
        return {"image": f"images/{image}", "question": s["question"] if question is None else question,
                "response_1": s["response_1"], "response_2": s["response_2"],
                "better_response_id": s["better_response_id"] if better is None else better}

    rows, bad = [], {}

    def add(r: dict, reason: str | None = None) -> None:
        if reason is not None:
            bad[len(rows)] = reason
        rows.append(r)

    add(row(0, "jpeg.jpg", better=1))
    add(row(1, "png.png", better=2))  # Align-Anything's swapped order: the second response is the better one
    add(row(2, "corrupt.jpg"), "image cannot be decoded")
    add(row(3, "truncated.png"), "image cannot be decoded")
    add(row(2, "rgba.png"))
    add(row(3, "grey.png"))
    add(row(4, "one-pixel.png"))
    add(row(5, "not-there.png"), "image file unreadable")
    add(row(6, "good-6.png", question=""), "question is empty")
    add(row(7, "good-7.png", question=" ".join(["describe the picture"] * 80)), "more than the model's context of")
    add(row(0, "jpeg.jpg", better=1), "duplicate of row 0")
    add(row(8, "good-8.png", better="2"))  # a string id, as some exports write it
    add(row(9, "good-9.png", better=0), "better_response_id must be 1 or 2, got 0")
    add(row(1, "png.png", better=2), "duplicate of row 1")
    for i in (5, 10, 11):
        add(row(i, f"good-{i}.png", better=1 + i % 2))
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows, bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, world_dir, world, bundle):
    root = tmp_path_factory.mktemp("bad-inputs")
    rows, bad = build_corpus(root, world_dir, world)
    dump = run_dump(DumpConfig(model=str(world_dir / "model"), dataset=DatasetSpec(path=str(root / "train.jsonl")), layer=0,
                               out=str(root / "dump"), batch_size=4, samples_per_shard=6, device="cpu", progress=False),
                    bundle=bundle)
    train_sae(TrainConfig(activations=str(root / "dump"), out=str(root / "sae"), architecture="topk", k=4, expansion_factor=2,
                          batch_size=64, total_tokens=64 * 10, scale_batches=2, buffer_rows=1024, eval_rows=0, device="cpu",
                          progress=False))
    good = [i for i in range(len(rows)) if i not in bad]
    scoring = run_scoring(ScoreConfig(activations=str(root / "dump"), sae=str(root / "sae"), tables=str(root / "tables"), top=10,
                                      per_side=2, reference_samples=len(good), device="cpu", progress=False))
    filtered = run_filter(FilterConfig(tables=str(root / "tables"), out=str(root / "filtered"), scorer="agreement", top_fraction=1.0))
    return root, rows, bad, good, dump, scoring, filtered


def test_every_bad_row_is_recorded_with_its_reason(corpus):
    root, rows, bad, good, dump, *_ = corpus
    rejected = pq.ParquetDataset(root / "dump" / "rejected").read().to_pylist()
    assert sorted(r["row_index"] for r in rejected) == sorted(bad)
    for r in rejected:
        assert bad[r["row_index"]] in r["reason"], r
    assert dump["n_rejected"] == len(bad) and dump["n_samples"] == len(good)


def test_every_good_row_is_dumped_scored_and_kept(corpus):
    root, rows, bad, good, dump, scoring, filtered = corpus
    samples = pq.ParquetDataset(root / "dump" / "samples").read()
    assert sorted(samples.column("row_index").to_pylist()) == good
    con = connect(root / "tables")
    scored = con.sql("SELECT row_index FROM samples ORDER BY row_index").fetchall()
    assert [r for (r,) in scored] == good and scoring["n_samples"] == len(good)
    per_scorer = con.sql("SELECT scorer, count(DISTINCT sample_id), count(*), count(score) FROM scores GROUP BY scorer").fetchall()
    assert per_scorer and all(n == total == finite == len(good) for _, n, total, finite in per_scorer), per_scorer
    assert filtered["n_kept"] == len(good) and filtered["splits"] == {"sft": len(good), "dpo": len(good)}


def test_the_filtered_rows_keep_the_preference_order_and_images(corpus):
    root, rows, bad, good, *_ = corpus
    dpo = load_filtered(root / "filtered", "dpo")
    want = {}
    for i in good:
        r = rows[i]
        better, worse = ("response_1", "response_2") if str(r["better_response_id"]) == "1" else ("response_2", "response_1")
        want[r["question"]] = (r[better], r[worse])
    got = {}
    for ex in dpo:
        question = next(c["text"] for c in ex["prompt"][0]["content"] if c["type"] == "text")
        got[question] = (ex["chosen"][0]["content"][0]["text"], ex["rejected"][0]["content"][0]["text"])
        assert len(ex["images"]) == 1 and ex["images"][0].mode == "RGB"  # RGBA and greyscale come out as RGB
    assert got == want
    assert any(str(rows[i]["better_response_id"]) == "2" for i in good)  # the swapped order is exercised

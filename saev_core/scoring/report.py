"""A static HTML feature browser over the feature tables: what a latent means, why a sample scored.

``write_report`` renders, into one self-contained directory (inline CSS/JS, images as data URIs,
relative links, so it opens from ``file://`` with no network):

- ``index.html``: latents ranked by cross-modal weight then firing rate, filterable by kind
  (cross-modal / image-only / text-only / all) and paginated in the browser;
- ``latents/<id>.html``: the latent's top-activating samples, each image with a patch heat map of
  that latent (clipped at the 1st/99th percentile, upsampled, a perceptual colour map) and its text
  with activating tokens highlighted, plus firing rates and the cross-modal weight;
- ``samples/<id>.html``: a sample's score under every scorer, its co-occurring latents and a patch
  map of the number of active latents per patch;
- ``plots/*.png``, also inline in the index: score distributions per scorer (clean vs low-quality
  when evaluation labels are given), the SAEs' FVU vs L0 and the experiment's plot when handed them.

Per-token activations are recomputed from the dump for the samples shown only.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from saev_core.activations.shards import ActivationDump, to_tensor
from saev_core.sae.checkpoint import load_sae, resolve_sae_dir, training_manifest
from saev_core.configs import DEFAULT_SCORER
from saev_core.activations.data import DatasetSpec, find_samples, open_dataset
from saev_core.io import atomic_dir
from saev_core.tables.query import open_views, row_indices
from saev_core.tables.schema import scoring_manifest
from saev_core.sae.train import dead_note

CSS = """body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.tok{padding:0 .12rem;border-radius:3px}
.card{display:inline-block;vertical-align:top;margin:.5rem;padding:.5rem;border:1px solid #ddd;border-radius:6px;width:230px}
.card img{width:224px;height:224px;image-rendering:pixelated}button{margin-right:.3rem}.muted{color:#777}"""

INDEX_JS = """const rows=[...document.querySelectorAll('#latents tbody tr')];let kind='all',page=0;const per=200;
function show(){const keep=rows.filter(r=>kind==='all'||r.dataset.kind===kind);rows.forEach(r=>r.style.display='none');
keep.slice(page*per,(page+1)*per).forEach(r=>r.style.display='');
document.getElementById('pager').textContent=`${keep.length} latents, page ${page+1} of ${Math.max(1,Math.ceil(keep.length/per))}`;}
function setKind(k){kind=k;page=0;show();}function step(d){page=Math.max(0,page+d);show();}show();"""


def png_data_uri(png: bytes) -> str:
    """PNG bytes as an inline data URI (the report and the Prefect artifact show images with no file access)."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return png_data_uri(buf.getvalue())


def _figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _closest(pairs: list[tuple[int, int]], aspect: float) -> tuple[int, int] | None:
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / aspect)), default=None)


def patch_grid(values: np.ndarray, aspect: float = 1.0, base_side: int | None = None) -> np.ndarray:
    """Image-token values as a 2-D patch grid, ``aspect`` = image height / width.

    - LLaVA-NeXT any-resolution (``base_side`` given): ``base_side``^2 tokens of the resized
      whole image, then the unpadded high-resolution grid of H rows of W patches plus one
      image-newline token each (n = base_side^2 + H (W + 1)); the high-resolution grid is returned,
      H and W the factorisation closest to the image's aspect.
    - A square count (LLaVA-1.5, CLIP/SigLIP towers): side x side.
    - Otherwise (Qwen-VL's merged, aspect-preserving grids): the H x W = n closest to the aspect;
      one row when n has no such factorisation.
    """
    n = len(values)
    if base_side and n > base_side * base_side:
        m = n - base_side * base_side
        hw = _closest([(h, m // h - 1) for h in range(1, m + 1) if m % h == 0 and m // h > 1], aspect)
        if hw is not None:
            return values[base_side * base_side:].reshape(hw[0], hw[1] + 1)[:, : hw[1]]
    side = math.isqrt(n)
    if side * side == n:
        return values.reshape(side, side)
    hw = _closest([(h, n // h) for h in range(2, n // 2 + 1) if n % h == 0], aspect)
    return values.reshape(hw) if hw is not None else values.reshape(1, n)


def base_side_of(model: str) -> int | None:
    """Patches per side of the base image of an any-resolution model (LLaVA-NeXT), else None."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model)
    except Exception:  # offline or not a transformers model: fall back to shape-only layouts
        return None
    vision = getattr(cfg, "vision_config", None)
    if getattr(cfg, "image_grid_pinpoints", None) and vision is not None:
        return vision.image_size // vision.patch_size
    return None


def heat_overlay(image: Image.Image, grid: np.ndarray, lo: float, hi: float, size: int = 224, alpha: float = 0.55) -> Image.Image:
    """``grid`` clipped to [lo, hi], upsampled to the image and blended with the inferno colour map."""
    from matplotlib import colormaps

    norm = np.clip((grid - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(grid, dtype=float)
    heat = Image.fromarray((norm * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    coloured = (colormaps["inferno"](np.asarray(heat) / 255.0)[..., :3] * 255).astype(np.uint8)
    base = image.convert("RGB").resize((size, size), Image.NEAREST)
    return Image.blend(base, Image.fromarray(coloured), alpha)


def highlight(tokens: list[str], acts: np.ndarray, hi: float) -> str:
    """Text tokens as spans whose background strength is the activation (0 .. hi)."""
    out = []
    for tok, a in zip(tokens, acts):
        w = 0.0 if hi <= 0 else float(min(max(a / hi, 0.0), 1.0))
        style = f' style="background:rgba(255,140,0,{w:.2f})" title="{a:.3f}"' if a > 0 else ""
        out.append(f'<span class="tok{" on" if a > 0 else ""}"{style}>{html.escape(tok)}</span>')
    return " ".join(out)


class _Context:
    """Everything the pages share: tables, dump, SAE, tokenizer and source rows."""

    def __init__(self, tables: str | Path, dataset: str, sae_id: str):
        from transformers import AutoTokenizer

        self.con = open_views(tables)
        self.dataset, self.sae_id = dataset, sae_id
        self.scoring = scoring_manifest(tables, dataset, sae_id)
        self.dump = ActivationDump.open(self.scoring["activations"])
        self.sae = load_sae(resolve_sae_dir(self.scoring["sae"])).eval()
        self.tok = AutoTokenizer.from_pretrained(self.dump.manifest["model"])
        self.base_side = base_side_of(self.dump.manifest["model"])
        self.spec = DatasetSpec.model_validate(self.scoring["source_dataset"])
        self._ds = None
        self._rows: dict[str, dict] = {}
        self._images: dict[str, Image.Image] = {}

    def q(self, sql: str, **params):
        bound = {k: v for k, v in {"d": self.dataset, "s": self.sae_id, **params}.items() if f"${k}" in sql}
        return self.con.execute(sql, bound).fetchall()

    def rows(self, sample_ids: list[str]) -> dict[str, dict]:
        """Per sample: token strings, modality and the [T, d_sae] codes (special tokens dropped); cached."""
        missing = [s for s in sample_ids if s not in self._rows]
        if missing:
            self._rows.update(self._read_rows(missing))
        return {s: self._rows[s] for s in sample_ids if s in self._rows}

    def _read_rows(self, sample_ids: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for shard in self.dump.files:
            t = pq.read_table(shard, filters=[("sample_id", "in", sample_ids)])
            t = t.filter(np.asarray(t.column("modality").to_pylist()) != "special")
            if t.num_rows == 0:
                continue
            with torch.no_grad():
                codes = self.sae.encode(to_tensor(t)).numpy()
            sids = np.asarray(t.column("sample_id").to_pylist())
            mods = np.asarray(t.column("modality").to_pylist())
            toks = t.column("token_id").to_numpy()
            for sid in dict.fromkeys(sids):
                sel = sids == sid
                out[sid] = {"codes": codes[sel], "image": mods[sel] == "image",
                            "tokens": self.tok.convert_ids_to_tokens([int(x) for x in toks[sel]])}
        return out

    def images(self, sample_ids: list[str]) -> dict[str, Image.Image]:
        missing = [s for s in sample_ids if s not in self._images]
        if missing:
            self._images.update(self._read_images(missing))
        return {s: self._images[s] for s in sample_ids if s in self._images}

    def _read_images(self, sample_ids: list[str]) -> dict[str, Image.Image]:
        if self._ds is None:
            self._ds = open_dataset(self.spec)
        return {sid: s.image for sid, s in find_samples(self.spec, row_indices(self.con, self.dataset, sample_ids), self._ds).items()}


def _page(title: str, body: str, depth: int, script: str = "") -> str:
    up = "../" * depth
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body><p><a href='{up}index.html'>index</a></p><h1>{html.escape(title)}</h1>{body}"
            f"{'<script>' + script + '</script>' if script else ''}</body></html>")


def latent_page(ctx: _Context, fid: int, stat: dict, top: int) -> tuple[str, list[str]]:
    top_rows = ctx.q("SELECT sample_id, max(max_act) m FROM sample_features WHERE dataset = $d AND sae_id = $s AND feature_id = $f "
                     "GROUP BY sample_id ORDER BY m DESC, sample_id LIMIT $k", f=fid, k=top)
    sids = [r[0] for r in top_rows]
    rows, images = ctx.rows(sids), ctx.images(sids)
    img_acts = np.concatenate([rows[s]["codes"][rows[s]["image"], fid] for s in sids if s in rows] or [np.zeros(1)])
    lo, hi = np.percentile(img_acts, [1, 99]) if img_acts.size else (0.0, 1.0)
    txt_hi = max([rows[s]["codes"][~rows[s]["image"], fid].max(initial=0) for s in sids if s in rows] or [1.0])
    cards = []
    for sid in sids:
        if sid not in rows or sid not in images:
            continue
        r = rows[sid]
        a = r["codes"][:, fid]
        grid = patch_grid(a[r["image"]], images[sid].height / images[sid].width, ctx.base_side)
        text = highlight([t for t, m in zip(r["tokens"], r["image"]) if not m], a[~r["image"]], txt_hi)
        cards.append(f"<div class='card latent-sample'><img class='heat' alt='patch heat map of latent {fid}' src='{_png(heat_overlay(images[sid], grid, lo, hi))}'>"
                     f"<p class='text'>{text}</p><p class='muted'><a href='../samples/{sid}.html'>{sid}</a> max {a.max():.3f}</p></div>")
    body = (f"<p>kind <b>{stat['kind']}</b>, cross-modal weight <b>{stat['cross_modal_weight']:.3f}</b>; firing rate "
            f"image {stat['firing_rate_image']:.4f}, text {stat['firing_rate_text']:.4f}; top occurrences: "
            f"{stat['n_top_image']} image, {stat['n_top_text']} text.</p><p class='muted'>Heat maps clipped at the 1st/99th "
            f"percentile ({lo:.3f} .. {hi:.3f}) of this latent over the samples shown.</p>" + "".join(cards))
    return _page(f"latent {fid}", body, 1), sids


def sample_page(ctx: _Context, sid: str, weights: dict[int, float], linked: set[int]) -> str:
    scores = ctx.q("SELECT scorer, score, rank, percentile FROM scores WHERE dataset = $d AND sae_id = $s AND sample_id = $x "
                   "ORDER BY scorer", x=sid)
    co = ctx.q("SELECT feature_id, max(max_act) FILTER (WHERE modality = 'image'), max(max_act) FILTER (WHERE modality = 'text') "
               "FROM sample_features WHERE dataset = $d AND sae_id = $s AND sample_id = $x GROUP BY feature_id "
               "HAVING count(DISTINCT modality) = 2 ORDER BY feature_id", x=sid)
    q = ctx.q("SELECT question, coalesce(answer, chosen) FROM samples WHERE dataset = $d AND sample_id = $x", x=sid)
    rows, images = ctx.rows([sid]), ctx.images([sid])
    parts = []
    if q:
        parts.append(f"<p class='question'><b>Q:</b> {html.escape(q[0][0] or '')}<br><b>A:</b> {html.escape(q[0][1] or '')}</p>")
    if sid in rows and sid in images:
        r = rows[sid]
        counts = (r["codes"][r["image"]] > 0).sum(1).astype(float)
        img = heat_overlay(images[sid], patch_grid(counts, images[sid].height / images[sid].width, ctx.base_side),
                           *np.percentile(counts, [1, 99]))
        parts.append(f"<div class='card'><img class='heat' alt='active latents per patch' src='{_png(img)}'>"
                     f"<p class='muted'>active latents per patch ({counts.min():.0f} .. {counts.max():.0f})</p></div>")
    parts.append("<h2>Scores</h2><table><tr><th>scorer</th><th>score</th><th>rank</th><th>percentile</th></tr>" +
                 "".join(f"<tr><td>{s}</td><td>{v:.4f}</td><td>{k}</td><td>{p:.3f}</td></tr>" for s, v, k, p in scores) + "</table>")
    link = lambda f: f"<a href='../latents/{f}.html'>{f}</a>" if f in linked else str(f)  # noqa: E731
    parts.append("<h2>Co-occurring latents</h2><table><tr><th>latent</th><th>max on image</th><th>max on text</th><th>weight</th></tr>" +
                 "".join(f"<tr><td>{link(f)}</td><td>{a:.3f}</td><td>{b:.3f}</td><td>{weights.get(f, 0.0):.3f}</td></tr>" for f, a, b in co)
                 + "</table>")
    return _page(f"sample {sid}", "".join(parts), 1)


def score_plot(ctx: _Context, labels: str | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = ctx.con.execute("SELECT sample_id, scorer, score FROM scores WHERE dataset = $d AND sae_id = $s",
                         {"d": ctx.dataset, "s": ctx.sae_id}).df()
    clean = None
    if labels:
        lab = pq.read_table(labels).to_pandas()
        lab = lab[lab["dataset"] == ctx.dataset] if "dataset" in lab.columns else lab
        clean = dict(zip(lab["sample_id"], lab["is_clean"]))
    scorers = sorted(df["scorer"].unique())
    fig, axes = plt.subplots(1, len(scorers), figsize=(3.2 * len(scorers), 2.6), dpi=100, squeeze=False)
    for ax, name in zip(axes[0], scorers):
        g = df[df["scorer"] == name]
        if clean is not None:
            is_clean = g["sample_id"].map(clean)
            ax.hist(g["score"][is_clean == True], bins=30, alpha=0.6, label="clean")  # noqa: E712
            ax.hist(g["score"][is_clean == False], bins=30, alpha=0.6, label="low-quality")  # noqa: E712
            ax.legend(fontsize=7)
        else:
            ax.hist(g["score"], bins=30)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return _figure_png(fig)


def latent_rows(stats: list[dict], pages: set[int]) -> str:
    """The index's latent table rows; the kind filter and pagination work on their data-kind."""
    def cell(fid: int) -> str:
        return f"<a href='latents/{fid}.html'>{fid}</a>" if fid in pages else str(fid)

    return "".join(
        f"<tr data-kind='{s['kind']}'><td>{cell(s['feature_id'])}</td>"
        f"<td>{s['kind']}</td><td>{s['cross_modal_weight']:.3f}</td><td>{s['firing_rate']:.4f}</td><td>{s['firing_rate_image']:.4f}</td>"
        f"<td>{s['firing_rate_text']:.4f}</td><td>{s['n_top_image']}/{s['n_top_text']}</td></tr>" for s in stats)


def frontier_plot(points: list[dict]) -> bytes:
    """FVU vs L0 of every SAE given (held-out metrics from their training manifests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=100)
    for arch in sorted({p["architecture"] for p in points}):
        pts = sorted((p for p in points if p["architecture"] == arch), key=lambda p: p["l0"])
        ax.plot([p["l0"] for p in pts], [p["fvu"] for p in pts], marker="o", label=arch)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("held-out FVU")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("FVU vs L0", fontsize=9)
    fig.tight_layout()
    return _figure_png(fig)


def write_report(tables: str | Path, out: str | Path, dataset: str, sae_id: str, n_latents: int = 100, top_samples: int = 8,
                 n_samples: int = 40, labels: str | None = None, points: list[dict] | None = None,
                 experiment: str | Path | None = None, scorer: str = DEFAULT_SCORER) -> dict:
    """Render the report into ``out`` (atomically); returns counts, the index path and the plots.

    ``points`` (architecture, l0, fvu of several SAEs: ``locate.sae_points``) adds their FVU-vs-L0
    plot; ``experiment`` (a `saev experiment` directory) adds its performance-vs-data-kept plot.
    Each plot is inline in the index and a PNG under ``plots/``, listed by title in the result.
    """
    ctx = _Context(tables, dataset, sae_id)
    cols = ["feature_id", "kind", "cross_modal_weight", "firing_rate", "firing_rate_image", "firing_rate_text", "n_top_image", "n_top_text"]
    stats = [dict(zip(cols, r)) for r in ctx.q(
        f"SELECT {', '.join(cols)} FROM feature_stats WHERE dataset = $d AND sae_id = $s ORDER BY cross_modal_weight DESC, firing_rate DESC, feature_id")]
    if not stats:
        raise ValueError(f"no feature_stats for dataset {dataset!r} and SAE {sae_id!r}; run `saev score` first")
    pages = {s["feature_id"]: s for s in stats[:n_latents]}
    weights = {s["feature_id"]: s["cross_modal_weight"] for s in stats}
    samples = [r[0] for r in ctx.q("SELECT sample_id FROM scores WHERE dataset = $d AND sae_id = $s AND scorer = $r "
                                   "ORDER BY rank LIMIT $k", r=scorer, k=n_samples)]
    out = Path(out)
    tops = [r[0] for r in ctx.q("SELECT DISTINCT sample_id FROM (SELECT sample_id, row_number() OVER (PARTITION BY feature_id "
                                "ORDER BY max_act DESC, sample_id) AS r FROM sample_features WHERE dataset = $d AND sae_id = $s "
                                "AND list_contains($f, feature_id)) WHERE r <= $k", f=list(pages), k=top_samples)]
    ctx.rows(sorted(set(tops) | set(samples)))  # one pass over the dump and the source data for every page
    ctx.images(sorted(set(tops) | set(samples)))
    with atomic_dir(out) as tmp:
        (tmp / "latents").mkdir()
        (tmp / "samples").mkdir()
        shown: set[str] = set(samples)
        for fid, stat in pages.items():
            page, sids = latent_page(ctx, fid, stat, top_samples)
            (tmp / "latents" / f"{fid}.html").write_text(page)
            shown.update(sids)
        for sid in sorted(shown):
            (tmp / "samples" / f"{sid}.html").write_text(sample_page(ctx, sid, weights, set(pages)))
        rows = latent_rows(stats, set(pages))
        top = "".join(f"<li><a href='samples/{s}.html'>{s}</a></li>" for s in samples[:10])
        plots = {"Score distributions": ("scores.png", score_plot(ctx, labels))}
        if points:
            plots["SAEs: FVU vs L0"] = ("frontier.png", frontier_plot(points))
        exp_plot = Path(experiment) / "plot.png" if experiment else None
        if exp_plot is not None and exp_plot.exists():
            plots["Alignment: performance vs data kept"] = ("experiment.png", exp_plot.read_bytes())
        (tmp / "plots").mkdir()
        for name, png in plots.values():
            (tmp / "plots" / name).write_bytes(png)
        figures = "".join(f"<h2>{title}</h2><img class='plot' alt='{title}' src='{png_data_uri(png)}'>" for title, (_, png) in plots.items())
        trained = training_manifest(ctx.scoring["sae"])
        dead = f" The SAE's {dead_note(trained['metrics'])}." if trained and "metrics" in trained else ""
        body = (f"<p>dataset <b>{html.escape(dataset)}</b>, SAE <b>{sae_id}</b>; {len(stats)} active latents, "
                f"{len(pages)} with pages; samples ranked by the {html.escape(scorer)} score.{dead}</p>{figures}"
                f"<h2>Top samples by {html.escape(scorer)} score</h2><ol>{top}</ol><h2>Latents</h2>"
                "<p><button onclick=\"setKind('all')\">all</button><button onclick=\"setKind('cross-modal')\">cross-modal</button>"
                "<button onclick=\"setKind('image-only')\">image-only</button><button onclick=\"setKind('text-only')\">text-only</button>"
                "<button onclick='step(-1)'>prev</button><button onclick='step(1)'>next</button> <span id='pager'></span></p>"
                "<table id='latents'><thead><tr><th>latent</th><th>kind</th><th>cross-modal weight</th><th>firing rate</th>"
                f"<th>image</th><th>text</th><th>top img/txt</th></tr></thead><tbody>{rows}</tbody></table>")
        (tmp / "index.html").write_text(_page(f"saev feature browser: {dataset}", body, 0, INDEX_JS).replace("<p><a href='index.html'>index</a></p>", ""))
    return {"index": str(out / "index.html"), "plots": {title: str(out / "plots" / name) for title, (name, _) in plots.items()},
            "latent_pages": len(pages), "sample_pages": len(shown), "latents": len(stats)}

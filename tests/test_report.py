"""The HTML feature browser, checked as files: pages exist, links resolve, images are embedded
and the activating tokens are highlighted (the headless-browser test is issue 7's next step)."""

from __future__ import annotations

import re

import numpy as np
from typer.testing import CliRunner

from saev_core.cli.app import app
from saev_core.scoring.report import highlight, patch_grid


def test_patch_grid_and_highlight_by_hand():
    assert patch_grid(np.arange(16)).shape == (4, 4) and patch_grid(np.arange(16))[1, 0] == 4
    assert patch_grid(np.arange(7)).shape == (1, 7)  # no 2-D factorisation
    assert patch_grid(np.arange(6), aspect=0.5).tolist() == [[0, 1, 2], [3, 4, 5]]  # wide image: 2 rows of 3
    assert patch_grid(np.arange(6), aspect=2.0).shape == (3, 2)


def test_patch_grid_lays_out_llava_next_any_resolution_by_hand():
    # base image 2x2 (tokens 0-3), then a 2 x 3 high-resolution grid with one newline token per row
    # (7 and 11): n = 2^2 + 2 * (3 + 1) = 12, for an image 2/3 as high as it is wide
    grid = patch_grid(np.arange(12), aspect=2 / 3, base_side=2)
    assert grid.tolist() == [[4, 5, 6], [8, 9, 10]]
    # a tall image: 3 rows of 1 patch + newline after the 2x2 base
    assert patch_grid(np.arange(10), aspect=3.0, base_side=2).tolist() == [[4], [6], [8]]


def test_base_side_comes_from_an_any_resolution_config(tmp_path, world_dir):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    from saev_core.scoring.report import base_side_of

    LlavaNextConfig(vision_config=CLIPVisionConfig(image_size=336, patch_size=14), text_config=LlamaConfig(),
                    image_grid_pinpoints=[[336, 672], [672, 336]]).save_pretrained(tmp_path)
    assert base_side_of(str(tmp_path)) == 24
    assert base_side_of(str(world_dir / "model")) is None  # plain LLaVA: square grids
    assert base_side_of(str(tmp_path / "missing")) is None
    html = highlight(["red", "circle"], np.array([0.5, 0.0]), hi=1.0)
    assert 'class="tok on" style="background:rgba(255,140,0,0.50)"' in html and '<span class="tok">circle</span>' in html


def test_report_pages_link_and_embed(tmp_path, world_dir):
    from saev_core.activations.data import DatasetSpec
    from saev_core.activations.dump import DumpConfig, run_dump
    from saev_core.scoring.run import ScoreConfig, run_scoring
    from saev_core.sae.train import TrainConfig, train_sae

    spec = DatasetSpec(path=str(world_dir / "datasets/demo-rlaif/train.parquet"), limit=40)
    run_dump(DumpConfig(model=str(world_dir / "model"), dataset=spec, layer=2, out=str(tmp_path / "dump"), progress=False))
    train_sae(TrainConfig(activations=str(tmp_path / "dump"), out=str(tmp_path / "sae"), architecture="topk", k=8, expansion_factor=4,
                          batch_size=256, total_tokens=256 * 20, scale_batches=2, buffer_rows=2048, progress=False))
    run_scoring(ScoreConfig(activations=str(tmp_path / "dump"), sae=str(tmp_path / "sae"), tables=str(tmp_path / "tables"),
                            progress=False, top=10, per_side=2))
    res = CliRunner().invoke(app, ["report", "--tables", str(tmp_path / "tables"), "--out", str(tmp_path / "r"), "--latents", "5",
                                   "--samples", "5", "--labels", str(world_dir / "labels.parquet")])
    assert res.exit_code == 0, res.output
    root = tmp_path / "r"
    index = (root / "index.html").read_text()
    assert "<img class='plot'" in index and "data:image/png;base64," in index and "setKind('cross-modal')" in index
    links = re.findall(r"href='((?:latents|samples)/[^']+)'", index)
    assert len([x for x in links if x.startswith("latents/")]) == 5
    for page in [root / x for x in links]:
        assert page.exists(), page
    latent = (root / next(x for x in links if x.startswith("latents/"))).read_text()
    assert latent.count("<img class='heat'") >= 1 and "class=\"tok" in latent
    for href in re.findall(r"href='\.\./([^']+)'", latent):
        assert (root / href).exists(), href
    assert "http://" not in index and "https://" not in index  # nothing fetched from the network


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_in_a_real_headless_chromium(tmp_path, world_dir):
    """Open the report as a person would: filter the index, click to a latent and to a sample."""
    from conftest import skip_or_fail

    browser_path = _chromium()
    if browser_path is None:
        skip_or_fail("no Chromium on this machine: `make test` installs Debian's chromium with apt-get where it can")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (the test extra has it)")

    test_report_pages_link_and_embed(tmp_path, world_dir)  # builds tmp_path / "r"
    shots = tmp_path / "screenshots"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((tmp_path / "r" / "index.html").as_uri())
        assert page.title().startswith("saev feature browser")
        assert page.evaluate("document.querySelector('img.plot').naturalWidth") > 0
        total = page.locator("#latents tbody tr:visible").count()
        page.get_by_role("button", name="cross-modal").click()
        kinds = page.locator("#latents tbody tr:visible td:nth-child(2)").all_inner_texts()
        assert set(kinds) <= {"cross-modal"} and len(kinds) <= total
        page.get_by_role("button", name="all").click()
        page.screenshot(path=str(shots / "index.png"), full_page=False)
        page.locator("#latents a").first.click()
        page.wait_for_load_state()
        assert page.title().startswith("latent ")
        widths = page.evaluate("[...document.querySelectorAll('img.heat')].map(i => i.naturalWidth)")
        assert widths and all(w == 224 for w in widths)
        assert page.locator("span.tok").count() > 0
        page.screenshot(path=str(shots / "latent.png"), full_page=True)
        page.locator(".latent-sample a").first.click()
        page.wait_for_load_state()
        assert page.title().startswith("sample ")
        assert page.locator("text=Co-occurring latents").count() == 1
        assert page.evaluate("document.querySelector('img.heat').naturalWidth") == 224
        page.screenshot(path=str(shots / "sample.png"), full_page=True)
        browser.close()
    assert all((shots / f).stat().st_size > 1000 for f in ("index.png", "latent.png", "sample.png"))

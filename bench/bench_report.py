"""How fast the report's index opens with many latents: a synthetic index of N latents (the real
row template, filter and pagination script) loaded in headless Chromium; reports the time to
the load event and to the first filtered page, and the file size.

    .venv/bin/python bench/bench_report.py --latents 10000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from saev_core.scoring.report import INDEX_JS, _page, latent_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=10_000)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args()
    rng = random.Random(0)
    kinds = ["cross-modal", "image-only", "text-only", "mixed", "rare"]
    stats = [{"feature_id": i, "kind": rng.choice(kinds), "cross_modal_weight": rng.random(), "firing_rate": rng.random() / 10,
              "firing_rate_image": rng.random() / 10, "firing_rate_text": rng.random() / 10, "n_top_image": rng.randint(0, 30),
              "n_top_text": rng.randint(0, 30)} for i in range(args.latents)]
    body = ("<p><button onclick=\"setKind('all')\">all</button><button onclick=\"setKind('cross-modal')\">cross-modal</button>"
            "<span id='pager'></span></p><table id='latents'><tbody>" + latent_rows(stats, set(range(100))) + "</tbody></table>")
    out = Path(tempfile.mkdtemp()) / "index.html"
    out.write_text(_page("bench", body, 0, INDEX_JS))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page()
        loads, filters = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            page.goto(out.as_uri(), wait_until="load")
            loads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            page.get_by_role("button", name="cross-modal").click()
            page.wait_for_function("document.getElementById('pager').textContent.includes('page 1')")
            filters.append(time.perf_counter() - t0)
        visible = page.locator("#latents tbody tr:visible").count()
        browser.close()
    res = {"latents": args.latents, "html_mb": round(out.stat().st_size / 2**20, 2), "load_s_median": sorted(loads)[2],
           "filter_s_median": sorted(filters)[2], "visible_rows": visible}
    print(f"| latents | index size | load (median of 5) | filter click (median of 5) | rows shown |\n| ---: | ---: | ---: | ---: | ---: |\n"
          f"| {args.latents:,} | {res['html_mb']} MB | {res['load_s_median']:.2f} s | {res['filter_s_median']:.3f} s | {visible} |")
    print(json.dumps(res))
    shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()

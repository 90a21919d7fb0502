"""Screenshot latent pages of a `saev report` in headless Chromium (Playwright + Debian chromium),
as a person would see them. Writes <out>/latent-<id>.png for each id.

Usage: python bench/screenshot_latents.py REPORT_HTML_DIR LATENT [LATENT ...] [--out data/report-screens]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path, help="the report's html directory (holds index.html and latents/)")
    ap.add_argument("latents", type=int, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("data/report-screens"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium not found; install Debian's chromium (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        for fid in args.latents:
            page.goto((args.report.resolve() / "latents" / f"{fid}.html").as_uri())
            page.screenshot(path=str(args.out / f"latent-{fid}.png"))
            print(args.out / f"latent-{fid}.png")
        browser.close()


if __name__ == "__main__":
    main()

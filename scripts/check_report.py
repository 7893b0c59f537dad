"""Render a report's index.html in headless chromium and write full-page screenshots.

    python scripts/check_report.py REPORT_DIR [--out DIR] [--width 1280] [--height 4000]

Writes REPORT_DIR/screenshot.png (or into --out) and prints its path; exits 1
when chromium is missing or the screenshot is blank. Look at the PNG: the
point is a human check that the page reads well in a real browser.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def screenshot(index: Path, png: Path, width: int = 1280, height: int = 4000, timeout: float = 120) -> Path:
    """Screenshot `index` with headless chromium (no network, throwaway profile)."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install -y chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp_png = png.with_name(f".{png.name}.tmp.png")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={tmp_png}", f"--window-size={width},{height}",
               "--hide-scrollbars", index.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not tmp_png.exists():
        raise RuntimeError(f"chromium failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    tmp_png.replace(png)
    return png


def is_blank(png: Path) -> bool:
    """True when the image is (nearly) one colour."""
    import matplotlib.image as mpimg

    pixels = mpimg.imread(png)[..., :3]
    return float(pixels.std()) < 0.02


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for the screenshot (default: the report's)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args(argv)
    index = args.report_dir / "index.html"
    if not index.exists():
        print(f"error: no index.html in {args.report_dir}", file=sys.stderr)
        return 1
    try:
        png = screenshot(index, (args.out or args.report_dir) / "screenshot.png", args.width, args.height)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if is_blank(png):
        print(f"error: the screenshot {png} is blank", file=sys.stderr)
        return 1
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

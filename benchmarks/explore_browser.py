"""An explore page in a real browser: headless Chromium loads it with JavaScript on, renders a class and takes a screenshot.

Fails (exit 1, the reasons listed) on any console message (the page logs nothing, so a message is
an error or a warning) or when the script did not render the first class: its name, both charts
and its thumbnails. Exits 0 with the reason, checking nothing, where Chromium is not installed
(Debian/Ubuntu: ``apt-get install chromium``).

    python benchmarks/explore_browser.py out/digits-d2c/assets/explore.html --screenshot docs/explore.png
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)")  # Chromium's log line of a console message, any level
RENDERED = {
    "the class's name": re.compile(r'<h2 id="class-name">[^<]+</h2>'),
    "the ranking chart": re.compile(r'<svg id="strip"[^>]*>\s*<polyline'),
    "the histogram": re.compile(r'<svg id="histogram"[^>]*>\s*<rect'),
    "a thumbnail": re.compile(r'<img src="data:image/webp;base64,'),
}


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def run_browser(browser: str, page: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", *arguments, page.resolve().as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def check_page(page: Path, screenshot: Path | None, browser: str, size: tuple[int, int] = (1280, 1000)) -> list[str]:
    """Problems found loading ``page``: console messages, parts not rendered; writes ``screenshot`` if given."""
    dom = run_browser(browser, page, "--dump-dom")
    problems = [f"console: {match.group(1)}" for match in CONSOLE.finditer(dom.stderr)]
    problems += [f"not rendered: {what}" for what, pattern in RENDERED.items() if not pattern.search(dom.stdout)]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = run_browser(browser, page, f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot.resolve()}")
        problems += [f"console: {match.group(1)}" for match in CONSOLE.finditer(shot.stderr)]
        if not screenshot.is_file():
            problems.append(f"no screenshot written: {shot.stderr.strip().splitlines()[-1:]}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--size", default="1280x1000", help="Window size of the screenshot, WIDTHxHEIGHT.")
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        print(f"skipped: no Chromium found ({', '.join(BROWSERS)}); install it with `apt-get install chromium`")
        return
    problems = check_page(args.page, args.screenshot, browser, tuple(int(v) for v in args.size.split("x")))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{args.page}: rendered in {browser} without console messages" + (f"; screenshot {args.screenshot}" if args.screenshot else ""))


if __name__ == "__main__":
    main()

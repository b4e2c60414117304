"""Look at the built docs site in a real browser engine: check every page, screenshot the main ones.

The browser is Chromium as embedded in Qt WebEngine (PyPI ``PyQt6-WebEngine``, the ``site`` extra),
run headless (Qt's ``offscreen`` platform, software rendering). Every page of the site is loaded at
a 1280 px wide window and checked in the page itself:

- ``overflow``: the page is wider than the window (something is clipped or the page scrolls
  sideways; wide tables must scroll inside their own box);
- ``broken images``: an ``<img>`` that did not load;
- ``raw maths``: LaTeX left unconverted (an ``arithmatex`` element, or ``\\(``/``\\[`` in the text).

The main pages are then saved as PNG screenshots (the top 1280 × ``--height`` px of each; the home
page also in dark mode) under ``--out``. The exit status is 1 when any page fails a check.

    python scripts/site_screenshots.py                 # builds the site with mkdocs first
    python scripts/site_screenshots.py --site /tmp/site --out docs/assets/screenshots
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1280
# (file name, page, dark mode): the pages a new user sees first, and one of each kind after
SHOTS = (
    ("home", "index.html", False),
    ("home-dark", "index.html", True),
    ("choosing", "choosing/index.html", False),
    ("training", "training/index.html", False),
    ("methods", "methods/index.html", False),
    ("method-olora", "methods/olora/index.html", False),
    ("results", "results/index.html", False),
    ("study-sst2-tuned", "results/study_sst2_tuned/index.html", False),
    ("benchmarks", "benchmarks/index.html", False),
    ("config", "config/index.html", False),
)
CHECKS = """(() => {
  const page = document.documentElement;
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  const text = document.querySelector('article') ? document.querySelector('article').innerText : '';
  const raw = document.querySelectorAll('.arithmatex').length
            + (text.match(/\\\\[\\(\\[]/g) || []).length;
  const scrolling = [...document.querySelectorAll('.md-typeset__table')]
                    .filter(t => t.scrollWidth > t.clientWidth + 1).length;
  return JSON.stringify({overflow: page.scrollWidth - window.innerWidth, broken: broken, raw_maths: raw,
                         scrolling_tables: scrolling,
                         images: document.images.length, maths: document.querySelectorAll('math').length,
                         height: page.scrollHeight, title: document.title});
})()"""
DARK = "document.body.setAttribute('data-md-color-scheme', 'slate'); true"


class Browser:
    """One headless Chromium page (Qt WebEngine), driven step by step."""

    def __init__(self, height: int) -> None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--disable-gpu --no-sandbox")
        from PyQt6.QtCore import QEventLoop, QTimer
        from PyQt6.QtWebEngineWidgets import QWebEngineView
        from PyQt6.QtWidgets import QApplication

        self.app = QApplication.instance() or QApplication(sys.argv[:1])
        self.loop_type, self.timer = QEventLoop, QTimer
        self.view = QWebEngineView()
        self.view.resize(WIDTH, height)
        self.view.show()

    def _wait(self, connect, ms: int = 30000) -> list:
        """Run Qt's events until ``connect``'s callback fires (or ``ms`` pass): its arguments."""
        loop, got = self.loop_type(), []

        def done(*args):
            got.extend(args)
            loop.quit()
        connect(done)
        self.timer.singleShot(ms, loop.quit)
        loop.exec()
        return got

    def open(self, path: Path) -> bool:
        from PyQt6.QtCore import QUrl

        signal = self.view.loadFinished
        got = self._wait(lambda done: (signal.connect(done), self.view.load(QUrl.fromLocalFile(str(path)))))
        signal.disconnect()
        return bool(got and got[0])

    def run(self, script: str):
        got = self._wait(lambda done: self.view.page().runJavaScript(script, done))
        return got[0] if got else None

    def settle(self, ms: int = 400) -> None:
        self._wait(lambda done: self.timer.singleShot(ms, done), ms + 1000)

    def screenshot(self, out: Path) -> None:
        self.settle()
        self.view.grab().save(str(out))


def pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("index.html") if "assets" not in p.parts and p.parent.name != "search")


def check_site(browser: Browser, site: Path) -> list[str]:
    """Every page's checks: one line per failing page."""
    problems = []
    for path in pages(site):
        name = str(path.parent.relative_to(site)) if path.parent != site else "(home)"
        if not browser.open(path):
            problems.append(f"{name}: did not load")
            continue
        found = json.loads(browser.run(CHECKS))
        bad = [f"{found['overflow']} px wider than the window" if found["overflow"] > 0 else "",
               f"broken images {found['broken']}" if found["broken"] else "",
               f"{found['raw_maths']} unconverted maths" if found["raw_maths"] else ""]
        if any(bad):
            problems.append(f"{name}: " + "; ".join(b for b in bad if b))
        print(f"  {name}: {found['images']} images, {found['maths']} maths, {found['scrolling_tables']} tables "
              f"scrolling sideways, {found['height']} px tall", flush=True)
    return problems


def take_screenshots(browser: Browser, site: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, page, dark in SHOTS:
        browser.open(site / page)
        if dark:
            browser.run(DARK)
        browser.screenshot(out / f"{name}.png")
        print(f"  {out / name}.png", flush=True)


def build(site: Path) -> None:
    print(f"building the site into {site} …", flush=True)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                   cwd=ROOT, check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built site (default: build one with mkdocs into a temp folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "assets" / "screenshots",
                        help="where the screenshots go")
    parser.add_argument("--height", type=int, default=1000, help="the window's height in px (what each shot shows)")
    parser.add_argument("--no-screenshots", action="store_true", help="check the pages only")
    args = parser.parse_args(argv)
    site = args.site or Path(tempfile.mkdtemp(prefix="lorakit-site-"))
    if args.site is None:
        build(site)
    browser = Browser(args.height)
    print(f"checking every page of {site} at {WIDTH} px …", flush=True)
    problems = check_site(browser, site)
    if not args.no_screenshots:
        print(f"screenshots ({WIDTH} × {args.height} px) …", flush=True)
        take_screenshots(browser, site, args.out)
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""The docs site's maths: LaTeX in the pages becomes MathML while MkDocs builds (no JavaScript, no
CDN); the build itself runs in CI (``mkdocs build --strict``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("latex2mathml", reason="the docs extra (lorakit[docs]) renders the site's maths")


def hook():
    spec = importlib.util.spec_from_file_location("mkdocs_mathml", ROOT / "scripts" / "mkdocs_mathml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latex_becomes_mathml_inline_and_displayed():
    page = ('<p>scale <span class="arithmatex">\\(s = \\alpha / r\\)</span></p>'
            '<div class="arithmatex">\\[W^\\prime = W + s\\, B A\\]</div><p>$5 is no maths</p>')
    out = hook().on_page_content(page)
    assert out.count("<math") == 2 and 'display="inline"' in out and 'display="block"' in out
    assert "arithmatex" not in out and "<mi>&#x003B1;</mi>" in out and "$5 is no maths" in out


def test_the_site_is_configured_to_use_it():
    class Loader(yaml.SafeLoader):  # mkdocs.yml may hold !!python tags; only the keys are read here
        pass

    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)
    assert "scripts/mkdocs_mathml.py" in config["hooks"]
    assert {"pymdownx.arithmatex": {"generic": True}} in config["markdown_extensions"]


def test_every_page_passes_the_browser_checks(tmp_path):
    """The built site in Chromium (Qt WebEngine, the ``site`` extra) at 1280 px: no page wider than
    the window, no broken image, no unconverted maths (scripts/site_screenshots.py)."""
    pytest.importorskip("PyQt6.QtWebEngineWidgets", reason="the site extra (lorakit[site]) is the browser")
    pytest.importorskip("mkdocs", reason="the docs extra builds the site")
    spec = importlib.util.spec_from_file_location("site_screenshots", ROOT / "scripts" / "site_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    site = tmp_path / "site"
    module.build(site)
    browser = module.Browser(800)
    assert len(module.pages(site)) > 40
    assert module.check_site(browser, site) == []
    broken = site / "broken" / "index.html"  # the checks can fail: a page with each defect
    broken.parent.mkdir()
    broken.write_text('<html><body><article><img src="absent.png"><p>\\(x\\)</p>'
                      '<div style="width:3000px">wide</div></article></body></html>')
    (line,) = module.check_site(browser, site)
    assert line.startswith("broken:") and "wider than the window" in line and "broken images" in line
    assert "1 unconverted maths" in line

"""A MkDocs hook: the pages' LaTeX maths as MathML, converted while the site is built.

``pymdownx.arithmatex`` (generic mode) marks ``$...$`` and ``$$...$$`` in the Markdown as
``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``;
this hook replaces each by the MathML that ``latex2mathml`` gives, which browsers render
natively: the site needs no JavaScript and no CDN for its maths, at build time or when read.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

MATH = re.compile(r'<(span|div) class="arithmatex">\\[(\[](.*?)\\[)\]]</\1>', re.S)


def _mathml(match: re.Match) -> str:
    display = "block" if match.group(1) == "div" else "inline"
    return convert(html.unescape(match.group(2)).strip(), display=display)


def on_page_content(text: str, **_: object) -> str:
    return MATH.sub(_mathml, text)

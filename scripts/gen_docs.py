"""Write the generated parts of the docs (docs/config.md and the option tables of docs/methods/*.md)
from the option declarations in the code. `python scripts/gen_docs.py --check` only reports."""

from __future__ import annotations

import sys
from pathlib import Path

from lorakit.describe import generated_docs

DOCS = Path(__file__).resolve().parent.parent / "docs"

if __name__ == "__main__":
    stale = {path: text for path, text in generated_docs(DOCS).items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text}
    for path, text in stale.items():
        if "--check" in sys.argv:
            print(f"stale: {path}")
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    sys.exit(1 if stale and "--check" in sys.argv else 0)

"""How long the embedded SmolLM2 takes to load: the first start on a machine (the GGUF is read and
converted into the cache) and every start after it (the converted copy), against reading the GGUF
as every start did before the cache, and against the imports alone (run by hand).

Each measurement is a fresh Python process (``python -c``), timed from its start to the loaded
model, so imports count; a first start gets an empty ``LORAKIT_CACHE`` of its own. Writes
``benchmarks/results/startup.json``.

    OMP_NUM_THREADS=2 python benchmarks/startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lorakit.io.json_text import json_text

CODE = {
    "cache": "from lorakit.models import load_model; load_model('embedded')",
    "imports": "from lorakit.models import load_model; from transformers import AutoModelForCausalLM, AutoTokenizer",
    "gguf": "import torch; from lorakit.models import _load_gguf, embedded_gguf_path; "
            "_load_gguf(embedded_gguf_path(), torch.float32)",
}


def seconds(code: str, cache: str) -> float:
    """Wall time of a fresh process running ``code`` with ``LORAKIT_CACHE=cache``."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "LORAKIT_CACHE": cache},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    found: dict[str, list[float]] = {"first start (converts)": [], "later start (cached copy)": [],
                                     "reading the GGUF (before the cache)": [], "imports alone": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            found["first start (converts)"].append(seconds(CODE["cache"], cache))
            found["later start (cached copy)"].append(seconds(CODE["cache"], cache))
            found["reading the GGUF (before the cache)"].append(seconds(CODE["gguf"], cache))
            found["imports alone"].append(seconds(CODE["imports"], cache))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in found.items()),
              flush=True)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "repeats": args.repeats,
              "seconds": {k: {"median": statistics.median(v), "all": [round(x, 2) for x in v]}
                          for k, v in found.items()}}
    out = Path(__file__).resolve().parent / "results" / "startup.json"
    out.write_text(json_text(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, value in result["seconds"].items():
        print(f"| {name} | {value['median']:.1f} |")


if __name__ == "__main__":
    main()

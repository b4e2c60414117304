"""Check lorakit's GGUF files in llama.cpp itself (through llama-cpp-python), on the embedded model.

For each method (LoRA, OLoRA+, PiSSA, DoRA and AdaLoRA's rank schedule): a short lorakit training
run on the embedded SmolLM2, then its adapter GGUF (``lorakit export --format gguf``, f32) loaded
by llama.cpp on the embedded GGUF, and its merged GGUF (``lorakit merge --format gguf``, f32).
On a few prompts, llama.cpp's logits are compared with lorakit's (transformers on the dequantized
weights): the base alone, the adapted model, the adapter's effect (adapted − base logits, whose
correlation across engines says the adapter is applied as trained), and the greedy continuations.
A control writes the adapter without the q/k row permutation, which must do worse.

llama.cpp multiplies Q4_1 weights by 8-bit-quantized activations, so its base logits differ from
the float32 ones by that rounding; the adapter's effect is what this script judges.

    pip install llama-cpp-python      # builds llama.cpp from source (minutes)
    python scripts/verify_gguf.py docs/results/gguf_llama_cpp
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lorakit.config import load_config
from lorakit.io import gguf_format
from lorakit.io.gguf_format import write_adapter_gguf, write_merged_gguf
from lorakit.loading import load_adapter_on_base
from lorakit.models import embedded_gguf_path
from lorakit.train import train

METHODS = ["lora", "olora_plus", "pissa", "dora", "adalora"]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Give three tips for staying healthy.",
           "Once upon a time, in a small village,"]
CONTINUATION = 16
RUN = ["model.path=embedded", "data.path=chatterbot", "data.train_size=64", "data.eval_size=8", "data.max_length=64",
       "train.batch_size=4", "train.grad_accum=1", "train.max_steps=8", "train.lr=3e-3", "train.report_to=none",
       "train.save_every=null", "eval.metrics=[eval_loss]", "method.targets=all-linear"]
SHORT = {"adalora": ["method.adalora_t_init=2", "method.adalora_t_final=4"]}


def llama(adapter: Path | None = None, model: Path | None = None):
    from llama_cpp import Llama

    return Llama(model_path=str(model or embedded_gguf_path()), lora_path=str(adapter) if adapter else None,
                 logits_all=True, n_ctx=128, n_threads=2, verbose=False, seed=0)


def llama_logits(engine, tokens: list[int]) -> np.ndarray:
    engine.reset()
    engine.eval(tokens)
    return np.array(engine.scores[: len(tokens)], dtype=np.float64)


def llama_greedy(engine, tokens: list[int]) -> list[int]:
    engine.reset()
    out = []
    for token in engine.generate(tokens, temp=0.0, top_k=1, reset=True):
        out.append(int(token))
        if len(out) == CONTINUATION:
            break
    return out


@torch.no_grad()
def torch_logits(model, tokens: list[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([tokens])).logits[0].double().numpy()


@torch.no_grad()
def torch_greedy(model, tokens: list[int]) -> list[int]:
    out = model.generate(torch.tensor([tokens]), max_new_tokens=CONTINUATION, do_sample=False)
    return out[0, len(tokens):].tolist()


def compare(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    """The largest absolute difference over the prompts' positions."""
    return float(max(np.abs(a - b).max() for a, b in zip(ours, theirs)))


def next_tokens(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    """The share of positions where both engines rank the same next token first."""
    same = [int(a.argmax(-1)[i] == b.argmax(-1)[i]) for a, b in zip(ours, theirs) for i in range(len(a))]
    return round(sum(same) / len(same), 4)


def effect_correlation(ours_base, ours, theirs_base, theirs) -> float:
    a = np.concatenate([(x - b).ravel() for x, b in zip(ours, ours_base)])
    b = np.concatenate([(x - y).ravel() for x, y in zip(theirs, theirs_base)])
    return float(np.corrcoef(a, b)[0, 1])


def check(method: str, folder: Path, tokens: list[list[int]], base: dict) -> dict:
    config = load_config(None, [*RUN, *SHORT.get(method, []), f"method.name={method}",
                                f"train.output_dir={folder / method}"])
    train(config, progress=False)
    adapter, _ = load_adapter_on_base(folder / method / "adapter")
    ours = [torch_logits(adapter.model, t) for t in tokens]
    found = {"method": method, "effect_max_abs": compare(ours, base["ours"])}  # how far training moved the logits
    for name, writer in (("adapter", "adapter"), ("no_permutation_control", "control")):
        path = folder / f"{method}_{name}.gguf"
        if writer == "control":
            saved, gguf_format.ARCHITECTURES["llama"] = gguf_format.ARCHITECTURES["llama"], ("LLAMA", False)
        try:
            write_adapter_gguf(adapter, path, "f32")
        finally:
            if writer == "control":
                gguf_format.ARCHITECTURES["llama"] = saved
        engine = llama(adapter=path)
        theirs = [llama_logits(engine, t) for t in tokens]
        found[name] = {"max_abs_logit_difference": compare(ours, theirs),
                       "effect_correlation": effect_correlation(base["ours"], ours, base["theirs"], theirs)}
        if writer == "adapter":
            found[name]["greedy_agree"] = [llama_greedy(engine, t) == torch_greedy(adapter.model, t) for t in tokens]
            found[name]["next_token_agree"] = next_tokens(ours, theirs)
    write_merged_gguf(adapter, embedded_gguf_path(), folder / f"{method}_merged.gguf", "f32")
    merged = llama(model=folder / f"{method}_merged.gguf")
    theirs = [llama_logits(merged, t) for t in tokens]
    found["merged"] = {"max_abs_logit_difference": compare(ours, theirs),
                       "effect_correlation": effect_correlation(base["ours"], ours, base["theirs"], theirs),
                       "greedy_agree": [llama_greedy(merged, t) == torch_greedy(adapter.model, t) for t in tokens],
                       "next_token_agree": next_tokens(ours, theirs)}
    return found


def main(out: Path) -> None:
    from lorakit.models import load_model

    started = time.time()
    model, tokenizer = load_model("embedded")
    tokens = [tokenizer(p)["input_ids"] for p in PROMPTS]
    engine = llama()
    base = {"ours": [torch_logits(model, t) for t in tokens], "theirs": [llama_logits(engine, t) for t in tokens]}
    results = {"prompts": PROMPTS, "base_max_abs_logit_difference": compare(base["ours"], base["theirs"]),
               "base_greedy_agree": [llama_greedy(engine, t) == torch_greedy(model, t) for t in tokens],
               "base_next_token_agree": next_tokens(base["ours"], base["theirs"]),
               "methods": []}
    with tempfile.TemporaryDirectory() as folder:
        for method in METHODS:
            print(f"checking {method} in llama.cpp", file=sys.stderr)
            results["methods"].append(check(method, Path(folder), tokens, base))
    import llama_cpp

    results["llama_cpp_python"] = llama_cpp.__version__
    results["seconds"] = round(time.time() - started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/gguf_llama_cpp"))

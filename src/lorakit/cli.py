"""The ``lorakit`` command line: train, eval, merge, export, combine, import, compare, tune, demo, chat, generate,
methods.

Bad input prints one line ``lorakit: error: ...`` and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import LorakitError
from .io.json_text import json_text


def _cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train import train
    from .train.output_dir import make_output_dir

    config = load_config(args.config, args.overrides)
    make_output_dir(Path(config.train.output_dir), config, args.overwrite, inputs=(args.config,))
    summary = train(config, resume=args.resume)  # quiet: _run
    print(json_text(summary, indent=2, ensure_ascii=False))


def _cmd_eval(args: argparse.Namespace) -> None:
    from .config import load_config
    from .io.atomic import write_text_atomic
    from .io.ownership import claim
    from .loading import final_evaluation, load_base_and_adapter, load_eval_file, load_held_out, load_split
    from .train.output_dir import run_inputs

    config = load_config(args.config, args.overrides)
    split = ([], load_eval_file(config, args.data, args.format)) if args.data else load_split(config)
    held_out = None if args.data else load_held_out(config)  # --data scores that file alone
    if not split[1]:
        raise LorakitError("the eval split is empty; set data.eval_size > 0")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise LorakitError(f"{args.out} is a file; --out takes a folder (for metrics.json and generations.jsonl)")
    if args.out:
        claim(args.out, "eval", EVAL_OUTPUTS, overwrite=args.overwrite,
              inputs=[args.config, args.data, args.adapter, *run_inputs(config)])
    model, tokenizer = load_base_and_adapter(config, args.adapter, split)
    out = Path(args.out) if args.out else None
    metrics = final_evaluation(config, model, tokenizer, split, held_out, out)
    result = {"adapter": args.adapter, "model": config.model.path, **metrics}
    print(json_text(result, indent=2, ensure_ascii=False))
    if out is not None:
        write_text_atomic(out / "metrics.json", json_text(result, indent=2, ensure_ascii=False) + "\n")


EVAL_OUTPUTS = ("metrics.json", "generations.jsonl", "predictions.jsonl", "held_out")
MERGE_MARKER = "lorakit_merge.json"  # provenance of a folder written by ``lorakit merge``


def _merge_legacy():
    """A merged folder of lorakit before manifests: its marker and what save_pretrained writes."""
    from .io.ownership import Legacy

    return Legacy(MERGE_MARKER, (MERGE_MARKER, "config.json", "generation_config.json", "model.safetensors",
                                 "model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors",
                                 "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                                 "tokenizer.model", "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt",
                                 "added_tokens.json", "chat_template.jinja"))


def _adapter_inputs(args: argparse.Namespace) -> list[str | None]:
    """What merge and export read: the adapter and its base model (given, or the one it records)."""
    from .io.adapter_files import read_adapter_config

    return [args.adapter, args.model or read_adapter_config(args.adapter).get("base_model")]


def _cmd_merge(args: argparse.Namespace) -> None:
    import torch

    from .io.ownership import check_replace, replace_folder
    from .loading import load_adapter_on_base
    from .quantized import dequantize_model
    from .status import phase

    out, owner = Path(args.out), {"overwrite": args.overwrite, "inputs": _adapter_inputs(args),
                                  "legacy": _merge_legacy()}
    check_replace(out, "merge", **owner)  # before the model loads
    if args.format == "gguf":
        return _merge_gguf(args, owner)
    # float16 weights fingerprint differently: merge in float32, then cast
    load_dtype = "float32" if args.dtype == "float16" else args.dtype
    adapter, tokenizer = load_adapter_on_base(args.adapter, args.model, load_dtype)
    provenance = {"adapter": str(Path(args.adapter).resolve()), "method": adapter.spec.to_dict(),
                  "base_model": adapter.config()["base_model"]}
    quantized = adapter.quantization()
    with phase("merge", f"merging the {adapter.spec.name} adapter into its base"):
        merged = adapter.merge_and_unload()
        if quantized is not None:  # never back into 4 or 8 bits
            dequantize_model(merged)
            print(f"the {quantized['type']} base was dequantized and merged in float32; writing {args.dtype} weights")
        if args.dtype != load_dtype or quantized is not None:
            merged = merged.to(getattr(torch, args.dtype))
    with phase("save", f"writing the merged model into {out}"), replace_folder(out, "merge", **owner) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MERGE_MARKER).write_text(json_text(provenance, indent=2) + "\n")
    print(f"merged model written to {out}")


def _merge_gguf(args: argparse.Namespace, owner: dict) -> None:
    from .io.gguf_format import base_gguf, check_outtype, merge_gguf
    from .loading import load_adapter_on_base
    from .status import phase

    base_model = _adapter_inputs(args)[1]
    base_gguf(base_model)  # a GGUF base, else the route that works: before the model loads
    check_outtype(args.outtype)
    adapter, _ = load_adapter_on_base(args.adapter, args.model, "float32")
    with phase("save", f"writing {Path(args.out) / 'model.gguf'}: {base_model} with the merged weights"):
        record = merge_gguf(adapter, args.out, base_model, args.outtype, **owner)
    print(f"merged GGUF written to {Path(args.out) / 'model.gguf'} ({record['replaced_tensors']} tensors merged in "
          f"{args.outtype}, the rest of {record['base']} kept as it was); Ollama: ollama create NAME -f "
          f"{Path(args.out) / 'Modelfile'}")


def _export_gguf(args: argparse.Namespace, owner: dict) -> None:
    from .io.gguf_format import check_outtype, export_gguf
    from .loading import load_adapter_on_base
    from .status import phase

    check_outtype(args.outtype)
    base_model = _adapter_inputs(args)[1]
    adapter, _ = load_adapter_on_base(args.adapter, args.model, "float32")
    with phase("export", f"writing {Path(args.out) / 'adapter.gguf'}: each layer's change as a plain pair"):
        record = export_gguf(adapter, args.out, base_model, args.outtype, args.rank, **owner)
    out = Path(args.out)
    print(f"llama.cpp LoRA adapter written to {out / 'adapter.gguf'} (rank {record['rank']}, {args.outtype}; largest "
          f"relative error of ΔW {record['max_relative_error']:.2e}); base it needs: {record['base']}")
    if (out / "Modelfile").exists():
        print(f"Ollama: ollama create NAME -f {out / 'Modelfile'}")


def _cmd_export(args: argparse.Namespace) -> None:
    import torch

    from .io.as_lora import export_as_lora
    from .io.ownership import check_replace, replace_folder
    from .io.peft_format import write_peft
    from .loading import load_adapter_on_base
    from .status import phase

    if args.base_model_name is not None and not args.base_model_name.strip():
        raise LorakitError("--base-model-name is empty; give the base model's hub id or path, or omit it")
    plain = args.as_lora or args.target == "vllm" or args.onto == "quantized"
    if args.format == "gguf" and args.target == "vllm":
        raise LorakitError("--target vllm is for the PEFT format; drop --format gguf")
    if args.format == "gguf" and args.onto == "quantized":
        raise LorakitError("--onto quantized is for a bitsandbytes base (PEFT, vLLM); llama.cpp quantizes its own "
                           "way, so drop --onto for --format gguf")
    if args.rank is not None and not (plain or args.format == "gguf"):
        raise LorakitError("--rank sets the rank of a plain-LoRA export; add --as-lora (or --format gguf)")
    owner = {"overwrite": args.overwrite, "inputs": _adapter_inputs(args)}
    check_replace(args.out, "export", **owner)  # before the model loads
    if args.format == "gguf":
        return _export_gguf(args, owner)
    # the base weights only carry the adapter: what is written (factors, initial factors, Delta-LoRA's
    # start factors, DoRA's magnitude) is stored in the adapter or regenerated in float32, so the
    # base is loaded in bf16, at half the memory of float32 — unless whole modules of it are written
    # (train_modules: a classifier head), which a bf16 model would round
    from .io.adapter_files import read_adapter_config

    whole = bool(read_adapter_config(args.adapter).get("train_modules"))
    adapter, _ = load_adapter_on_base(args.adapter, args.model, "float32" if whole or plain else "bfloat16")
    if plain:  # ΔW against the original weight, SVDs and the logit check in float32
        with phase("export", "writing each layer's change as a plain LoRA pair (an SVD per layer), then "
                   "checking the logits"):
            record = export_as_lora(adapter, args.out, args.rank, args.target, args.base_model_name,
                                    getattr(torch, args.dtype), args.onto, **owner)
        return _print_as_lora(record, Path(args.out))
    with phase("export", f"writing {args.out}"), replace_folder(args.out, "export", **owner) as tmp:
        write_peft(adapter, tmp, base_model=args.base_model_name, dtype=getattr(torch, args.dtype))
        written = json.loads((tmp / "adapter_config.json").read_text())
    path = Path(args.out)
    rank, base_name = written["r"], written["base_model_name_or_path"]
    print(f"PEFT-format adapter written to {path} (base model: {base_name}; rank {rank}: "
          f"serve it with vLLM's --max-lora-rank >= {rank})")


def _print_as_lora(record: dict, out: Path) -> None:
    worst = max(record["layers"].items(), key=lambda item: item[1]["relative_error"])
    print(f"plain LoRA written to {out} (rank {record['rank']}; serve it with vLLM's --max-lora-rank "
          f"{record['rank']} or more); largest relative error of ΔW {worst[1]['relative_error']:.2e} ({worst[0]}); "
          f"largest logit difference {record['max_abs_logit_difference']:.2e} (logits up to "
          f"{record['max_abs_logit']:.1f}); details in {out / 'as_lora.json'}")
    for change in record["changes"]:
        print(f"changed for {record['target']}: {change}")


def _cmd_import(args: argparse.Namespace) -> None:
    from .io.ownership import check_replace, replace_folder
    from .models import load_model, model_path
    from .peft_import import head_labels, load_peft, read_peft
    from .status import phase

    config, layers = read_peft(args.peft)  # a bad folder fails before the model loads
    base = args.model or config.get("base_model_name_or_path")
    owner = {"overwrite": args.overwrite, "inputs": [args.peft, base]}
    check_replace(args.out, "import", **owner)
    if not base:
        raise LorakitError(f"{args.peft} does not record its base model; pass --model PATH")
    model, _ = load_model(model_path(base), labels=head_labels(config, layers, args.peft))
    with phase("import", f"reading {args.peft} onto the base"):
        adapter = load_peft(model, args.peft, args.method)
    with phase("save", f"writing {args.out}"), replace_folder(args.out, "import", **owner) as tmp:
        adapter.write(tmp)
    print(f"{args.peft} imported as a {adapter.spec.name} adapter ({len(adapter.layers)} layers) in {args.out}")


def _cmd_combine(args: argparse.Namespace) -> None:
    from .combine import check_bases, check_request, combine
    from .io.ownership import check_replace, replace_folder
    from .models import load_model, model_path
    from .status import phase

    *adapters, out = args.paths
    weights = args.weights if args.weights is not None else [1.0] * len(adapters)
    check_request(weights, len(adapters), args.how, args.density, args.rank)  # before any model loads
    base = args.model or check_bases(adapters)
    owner = {"overwrite": args.overwrite, "inputs": [*adapters, base]}
    check_replace(out, "combine", **owner)
    if not base:
        raise LorakitError(f"{adapters[0]} does not record its base model; pass --model PATH")
    model, _ = load_model(model_path(base))
    with phase("combine", f"combining {len(adapters)} adapters ({args.how})"):
        adapter = combine(model, adapters, weights, args.how, args.density, args.rank, args.seed)
    with phase("save", f"writing {out}"), replace_folder(out, "combine", **owner) as tmp:
        adapter.write(tmp)
    ranks = sorted({layer.form.rank for layer in adapter.layers.values()})
    print(f"{len(adapters)} adapters combined ({args.how}, weights {weights}) into a lora adapter of rank "
          f"{ranks[-1] if len(ranks) == 1 else f'{ranks[0]}–{ranks[-1]}'} in {out}")


def _compare(raw: dict, overrides: list[str], args: argparse.Namespace, inputs: tuple[str, ...] = ()) -> None:
    from .experiments.compare import run_compare
    from .experiments.spec import load_compare_config

    base, spec, runs = load_compare_config(raw, overrides)
    command = "lorakit " + " ".join(sys.argv[1:])
    report = run_compare(base, spec, runs, command=command, progress=not args.quiet,
                         rerun_changed=args.rerun_changed, overwrite=args.overwrite, inputs=inputs)
    print(f"report: {report}")
    print(f"run folder: {report.parent}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from .io.yaml_files import read_yaml

    _compare(read_yaml(Path(args.config)), args.overrides, args, inputs=(args.config,))


def _cmd_tune(args: argparse.Namespace) -> None:
    from .tune import tune

    result = tune(args.config, args.overrides, trials=args.trials, timeout=args.timeout, overwrite=args.overwrite,
                  progress=not args.quiet)
    print(json_text(result, indent=2, ensure_ascii=False))


def _cmd_demo(args: argparse.Namespace) -> None:
    from .io.yaml_files import read_yaml

    name = "demo_classification.yaml" if args.task == "classification" else "demo.yaml"
    raw = read_yaml(Path(__file__).parent / "experiments" / name)
    if args.data:  # the path as given, not parsed as YAML like an override value
        raw["data"] = {**raw.get("data", {}), "path": args.data}
    _compare(raw, list(args.overrides), args)


def _cmd_chat(args: argparse.Namespace) -> None:
    from .chat import Sampling, reply, run_chat
    from .loading import load_adapter_on_base
    from .models import load_model

    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens, args.seed).check()
    if args.adapter:
        from .io.adapter_files import read_adapter_config
        from .loading import recorded_task

        task = recorded_task(read_adapter_config(args.adapter))["type"]
        if task != "causal_lm":
            raise LorakitError(f"{args.adapter} is a {task} adapter, which does not write text; score texts with "
                               "lorakit eval --data FILE --out DIR")
        adapter, tokenizer = load_adapter_on_base(args.adapter, args.model)
        model = adapter.model
    else:
        model, tokenizer = load_model(args.model or "embedded")
    if args.prompt is None:
        run_chat(model, tokenizer, sampling, args.system)
        return
    messages = [*([{"role": "system", "content": args.system}] if args.system else []),
                {"role": "user", "content": args.prompt}]
    reply(model, tokenizer, messages, sampling)


def _cmd_generate(args: argparse.Namespace) -> None:
    from .config import load_config
    from .evaluate.generation import generate_file
    from .io.ownership import check_new_file
    from .loading import load_base_and_adapter, load_eval_file
    from .train.output_dir import run_inputs

    config = load_config(args.config, args.overrides)
    if config.task.type != "causal_lm":
        raise LorakitError(f"lorakit generate writes a causal LM's answers; a {config.task.type} model's predictions "
                           "come from lorakit eval --data FILE --out DIR (predictions.jsonl)")
    check_new_file(args.out, "generate", "--out", overwrite=args.overwrite,
                   inputs=[args.data, args.config, args.adapter, *run_inputs(config)])
    records = load_eval_file(config, args.data, args.format, answered=False)
    model, tokenizer = load_base_and_adapter(config, args.adapter)
    e = config.eval
    generate_file(model, tokenizer, records, config.data.template, config.data.max_length, e.max_new_tokens,
                  e.generate_batch_size, Path(args.out))
    print(f"{len(records)} generations written to {args.out}")


def _cmd_methods(args: argparse.Namespace) -> None:
    from .describe import method_table, options_text

    print(options_text(args.name) if args.name else method_table())


def _cmd_example(args: argparse.Namespace) -> None:
    from .example_configs import example_list, example_text, write_example

    if args.name is None:
        print(example_list())
        return
    path = write_example(args.name, args.out, args.overwrite)
    command = example_text(args.name).splitlines()[1].lstrip("# ").strip()
    print(f"wrote {path}; run it with: {command.replace(f'{args.name}.yaml', str(path))}")


def _quiet_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no status lines and no progress bars (errors still show)")


def _overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output that holds files this command did not write: entries of the names it "
                        "writes are replaced, all others kept (never its own inputs)")


def _rerun_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerun-changed", action="store_true",
                   help="train again the runs of the output folder whose config differs from this comparison's "
                        "(default: refuse)")


def build_parser() -> argparse.ArgumentParser:
    from .data.formats import FORMATS
    from .version import __version__

    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA-family fine-tuning of causal LMs and "
                                                                 "sequence classifiers.")
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune with a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="the config's eval metrics (loss, BLEU, ROUGE, ...) on its eval split")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--adapter", help="adapter folder (default: the base model alone)")
    p.add_argument("--out", help="folder for metrics.json and generations.jsonl")
    p.add_argument("--data", help="evaluate on every record of this file instead of the config's eval split")
    p.add_argument("--format", choices=FORMATS, help="record format of --data (default: the config's data.format)")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_eval)
    _adapter_commands(sub)
    _combine_import_commands(sub)
    _study_commands(sub)
    _session_commands(sub, FORMATS)
    _reference_commands(sub)
    return parser


def _adapter_commands(sub: argparse._SubParsersAction) -> None:
    """merge and export: an adapter folder in, another format out."""
    p = sub.add_parser("merge", help="fold an adapter into its base model and save the result")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("out", help="output folder for the merged transformers model")
    p.add_argument("--model", help="base model (default: the one the adapter records)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf",
                   help="hf: a transformers folder; gguf: OUT/model.gguf for llama.cpp and Ollama (the base GGUF with "
                        "the adapted weights in --outtype, its tokenizer and chat template kept; GGUF bases only)")
    p.add_argument("--outtype", default="f16", help="with --format gguf: f32, f16, bf16 or q8_0")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("export", help="write an adapter in PEFT's LoRA format (for PEFT and vLLM)")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("out", help="output folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--model", help="base model to rebuild the adapter on (default: the one it records)")
    p.add_argument("--base-model-name", help="base_model_name_or_path to record (default: the base model's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written tensors")
    p.add_argument("--as-lora", action="store_true",
                   help="any method as plain LoRA pairs of its whole change ΔW (DoRA, VeRA, AdaLoRA, schedules, "
                        "spectral inits): exact where ΔW's rank allows, else by truncated SVD; each layer's error "
                        "and the logit difference are printed and saved in as_lora.json")
    p.add_argument("--rank", type=int, help="with --as-lora: at most this rank per layer (truncated SVD above it; "
                                            "DoRA's default: its own rank)")
    p.add_argument("--onto", choices=["original", "quantized"], default="original",
                   help="quantized (implies --as-lora): the change against the quantized base the adapter trained "
                        "on (a QLoRA base loaded again the same way; exact there, and rank r for LoftQ with "
                        "loftq_iter 1), refused where that base is not the checkpoint's quantization")
    p.add_argument("--format", choices=["peft", "gguf"], default="peft",
                   help="gguf: OUT/adapter.gguf, a llama.cpp LoRA adapter (any method as plain pairs, each layer's "
                        "scale folded in), with an Ollama Modelfile where the base GGUF is known")
    p.add_argument("--outtype", default="f16", help="with --format gguf: f32, f16, bf16 or q8_0")
    p.add_argument("--target", choices=["peft", "vllm"], default="peft",
                   help="vllm: a plain LoRA (implies --as-lora) at one of vLLM's --max-lora-rank values (padded, "
                        "or truncated above 512), refusing what vLLM cannot serve (modules_to_save)")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_export)



def _combine_import_commands(sub: argparse._SubParsersAction) -> None:
    """combine and import: adapters in, a lorakit adapter out."""
    p = sub.add_parser("combine", help="combine adapters of one base into one (PEFT's add_weighted_adapter rules)")
    p.add_argument("paths", nargs="+", metavar="ADAPTER ... OUT", help="two or more adapter folders, then the "
                                                                      "output folder")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per adapter (default: 1 each)")
    p.add_argument("--how", default="cat", help="cat (exact: Σ w_i ΔW_i), svd (exact up to --rank), linear, ties, "
                                                "dare_linear, dare_ties, magnitude_prune, or those with _svd")
    p.add_argument("--density", type=float, help="ties, dare and magnitude_prune: the fraction of entries kept")
    p.add_argument("--rank", type=int, help="svd rules: the combined rank (default: the largest adapter's)")
    p.add_argument("--seed", type=int, default=0, help="seeds DARE's random drops")
    p.add_argument("--model", help="base model (default: the one the adapters record)")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_combine)

    p = sub.add_parser("import", help="turn a PEFT LoRA adapter into a lorakit adapter that trains further")
    p.add_argument("peft", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("out", help="output folder for the lorakit adapter")
    p.add_argument("--model", help="base model (default: the one the PEFT adapter records)")
    p.add_argument("--method", default="lora", help="preset to continue training with, e.g. lora_plus or delta_lora "
                                                    "(one of the lora form; dora adapters import as dora)")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_import)


def _study_commands(sub: argparse._SubParsersAction) -> None:
    """compare, tune, demo."""
    p = sub.add_parser("compare", help="train several methods over several seeds and write a report")
    p.add_argument("config", help="compare YAML config (a training config plus a 'compare' section)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. compare.seeds=[0,1]")
    _quiet_flag(p)
    _overwrite_flag(p)
    _rerun_flag(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("tune", help="search a config's tune.space with Optuna, scored on a validation split "
                                    "(continues or joins the study in tune.output_dir)")
    p.add_argument("config", help="YAML config with a 'tune' section")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. tune.metric=accuracy")
    p.add_argument("--trials", type=int, help="tune.trials: trials of the whole study")
    p.add_argument("--timeout", type=float, help="tune.timeout: seconds after which this process starts no trial")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("demo", help="LoRA vs OLoRA vs OLoRA+ on the embedded model (about 6 minutes on a 2-core "
                                    "CPU); --task classification: LoRA vs rank allocators on the embedded encoder "
                                    "(about 5 minutes)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the demo config")
    p.add_argument("--task", choices=["causal_lm", "classification"], default="causal_lm",
                   help="causal_lm (default): instruction tuning of SmolLM2; classification: topics of the "
                        "chatterbot-corpus questions with all-MiniLM-L6-v2")
    p.add_argument("--data", help="a data file instead of the built-in chatterbot data (Alpaca records; with "
                                  "--task classification, labelled texts)")
    _quiet_flag(p)
    _overwrite_flag(p)
    _rerun_flag(p)
    p.set_defaults(func=_cmd_demo)


def _session_commands(sub: argparse._SubParsersAction, formats: tuple[str, ...]) -> None:
    """chat, generate."""
    p = sub.add_parser("chat", help="talk to a model (with --adapter, the adapted one) in the terminal")
    p.add_argument("--adapter", help="adapter folder (default: the base model alone)")
    p.add_argument("--model", help="base model (default: the one the adapter records, else the embedded model)")
    p.add_argument("--prompt", help="answer this one message and exit (no interactive session)")
    p.add_argument("--system", help="a system message to start the conversation with")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply at most")
    p.add_argument("--seed", type=int, help="seed for sampling (reproducible replies)")
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("generate", help="greedy generations for every record of a file, as JSONL")
    p.add_argument("config", help="YAML config file (model, data settings, eval generation settings)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--adapter", help="adapter folder (default: the base model alone)")
    p.add_argument("--data", required=True, help="the prompts to answer: records with a prompt (no answer needed) "
                                                 "in any supported format, or a .txt file of one prompt per line")
    p.add_argument("--format", choices=formats, help="record format of --data (default: the config's data.format)")
    p.add_argument("--out", required=True, help="JSONL file: prompt, reference (when present), prediction")
    _quiet_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_generate)


def _reference_commands(sub: argparse._SubParsersAction) -> None:
    """methods, example: what lorakit ships, listed and written out."""
    p = sub.add_parser("methods", help="list the method presets; with NAME, that method's options")
    p.add_argument("name", nargs="?", help="a preset: print its components and every option with its default and help")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("example", help="list the example configs shipped with lorakit; with NAME, write one")
    p.add_argument("name", nargs="?", help="an example: quickstart, chat_sft, dpo, classification_glue, qlora_*, fsdp")
    p.add_argument("out", nargs="?", help="where to write it (default ./NAME.yaml)")
    _overwrite_flag(p)
    p.set_defaults(func=_cmd_example)


def _run(args: argparse.Namespace, began: float | None) -> None:
    """The command, its slow phases said as they start (``lorakit.status``) and, for a command that
    has ``--quiet``, a last line with its wall time since ``began`` (default: now), phase by phase."""
    from .status import Timer, quiet, say

    timed = "quiet" in vars(args)
    with quiet(timed and args.quiet), Timer(began) as timer:
        args.func(args)
        if timed:
            say(timer.line())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lorakit`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also follow a flag (`train c.yaml --quiet train.lr=1e-4`), which argparse
    # leaves over: they are overrides still, in the order given
    takes_overrides = "overrides" in vars(args)
    if extra and not (takes_overrides and all("=" in e and not e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args = argparse.Namespace(**{**vars(args), "overrides": [*args.overrides, *extra]})
    from .status import process_started

    try:  # the console script counts from the process's start (imports included)
        _run(args, process_started() if argv is None else None)
    except LorakitError as exc:
        print(f"lorakit: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (lorakit methods | head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exit's flush stays silent
        return 0
    except OSError as exc:  # a file system refusal that no write site named: still one line, naming the path
        from .io.atomic import write_error

        print(f"lorakit: error: {write_error(exc.filename or 'a file', exc, verb='use')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lorakit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

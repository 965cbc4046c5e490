"""Tokenizer and R1 chat format: byte-level round trips, special tokens, training and its
errors, the official DeepSeek-R1 template (rendered by jinja2) vs ours, transformers parity,
and the `tokenizer` / `tokenize` / `template` / `init` verbs."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from r1lab import preset
from r1lab.cli import main
from r1lab.tokenizer import (
    ASSISTANT, BOS, CONTROL_TOKENS, END_THINK, EOS, MATH_SUFFIX, MIN_VOCAB_SIZE, PAD, SHIPPED_TOKENIZER_DIR,
    SPECIAL_TOKENS, TAG_TOKENS, THINK, USER, TokenizerError, load_tokenizer, math_prompt, official_chat_template,
    r1_zero_prompt, render_chat, train_tokenizer,
)

DATA = Path(__file__).resolve().parent / "data"
OFFICIAL_TEMPLATE = DATA / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks" / "gsm8k_test.jsonl"

ROUND_TRIP_TEXTS = [
    "안녕하세요, 세계! 한국어 문장은 잘 복원되어야 합니다.",
    "你好，世界。深度求索的推理模型会先思考再回答。",
    "emoji 🤖👍🏽 family 👨‍👩‍👧‍👦 flags 🇰🇷🇨🇳 keycap 1️⃣ and ✅",
    r"$\int_0^1 x^2\,dx = \frac{1}{3}$ and \boxed{\frac{\sqrt{2}}{2}} with \{braces\}",
    "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2]}  # comment\n    return None\r\n",
    "   leading\n\n\n\ttabs\t\t and  double  spaces   \n  \r\n\u00a0nbsp\u3000ideographic\u2028ls  trailing   ",
    "",
    " ",
    "\n",
    "mixed: Straße naïve café Ελληνικά русский العربية हिन्दी 日本語 ﬁ ligature",
    "<think>\nreasoning\n</think>\n\n<answer>42</answer><｜User｜>hi<｜Assistant｜>",
    "<thinking> <think </think <answer answer> <｜User <｜▁pad▁｜>",
    "\x00\x01\x7f control \ufeff bom \U0010ffff max",
]


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small tokenizer trained through the CLI on a corpus with text and JSONL files."""
    d = tmp_path_factory.mktemp("tok")
    (d / "a.txt").write_text("The quick brown fox jumps over the lazy dog.\n\n" * 50 + "12 + 34 = 46\n" * 20)
    rows = [{"question": f"What is {i} + {i + 1}?", "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}", "n": i}
            for i in range(100)]
    (d / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = d / "out"
    assert main(["tokenizer", "train", "--input", str(d / "a.txt"), str(d / "b.jsonl"), "--vocab-size", "300",
                 str(out), "--quiet"]) == 0
    return out


# ------------------------------------------------------------------ shipped tokenizer
def test_shipped_tokenizer_fits_the_tiny_preset(shipped):
    cfg = preset("tiny")
    assert shipped.vocab_size == cfg.vocab_size == 2048
    assert shipped.bos_token_id == cfg.bos_token_id == 0 and shipped.eos_token_id == cfg.eos_token_id == 1
    assert [shipped.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert shipped.pad_token_id == shipped.token_to_id(PAD) == 2
    assert shipped.think_token_id == 5 and shipped.end_think_token_id == 6
    cfg_json = json.loads((SHIPPED_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert cfg_json["bos_token"] == BOS and cfg_json["eos_token"] == EOS
    assert cfg_json["chat_template"] == OFFICIAL_TEMPLATE.read_text(encoding="utf-8")


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_is_exact(shipped, text):
    assert shipped.decode(shipped.encode(text)) == text


def test_round_trip_random_unicode(shipped):
    rng = random.Random(0)
    pools = [(0x20, 0x7e), (0xac00, 0xd7a3), (0x4e00, 0x9fff), (0x1f300, 0x1faff), (0x0, 0x2fff), (0x0, 0x10ffff)]
    for _ in range(300):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(pools)
            c = rng.randint(lo, hi)
            chars.append(chr(c) if not 0xd800 <= c <= 0xdfff else " ")
        text = "".join(chars)
        assert shipped.decode(shipped.encode(text)) == text


def test_each_special_token_is_one_id(shipped):
    for i, t in enumerate(SPECIAL_TOKENS):
        assert shipped.encode(t) == [i]
        ids = shipped.encode(f"x{t}y {t}\n")
        assert ids.count(i) == 2, t
    assert shipped.encode(THINK + "\n")[0] == shipped.think_token_id
    # control tokens are dropped by skip_special_tokens; the tags are text (SPEC §8)
    text = "".join(SPECIAL_TOKENS)
    assert shipped.decode(shipped.encode(text), skip_special_tokens=True) == "".join(TAG_TOKENS)
    assert all(shipped.decode([shipped.token_to_id(t)], skip_special_tokens=True) == "" for t in CONTROL_TOKENS)


def test_digits_are_single_tokens(shipped):
    ids = shipped.encode("1234567890 + 98765")
    assert shipped.pieces(ids)[:10] == list("1234567890")
    assert all(len(p) == 1 for p in shipped.pieces(shipped.encode("31415926535")))


def test_pieces_show_bytes_of_partial_characters(shipped):
    assert shipped.pieces(shipped.encode("한")) == ["<0xED>", "<0x95>", "<0x9C>"]   # U+D55C in UTF-8
    assert shipped.pieces(shipped.encode("<think> the")) == ["<think>", " the"]


def test_held_out_gsm8k_compresses(shipped):
    if not GSM8K_TEST.is_file():
        pytest.skip("shared benchmark data not present")
    text = "\n".join(json.loads(line)["question"] for line in GSM8K_TEST.read_text().splitlines())
    assert len(text) / len(shipped.encode(text)) > 2.8   # 3.1 characters per token: merges were learned


def test_decode_rejects_out_of_range_ids(shipped):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        shipped.decode([5, 2048])


# ------------------------------------------------------------------ training
def test_trained_tokenizer_layout(trained):
    tok = load_tokenizer(trained)
    assert tok.vocab_size == 300
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.bos_token_id == 0 and tok.eos_token_id == 1
    for text in ROUND_TRIP_TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox") / 2   # merges learned
    assert len(tok.encode("What is")) <= 3                                            # from the JSONL strings
    cfg = json.loads((trained / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == official_chat_template()
    assert cfg["bos_token"] == BOS and cfg["eos_token"] == EOS and cfg["clean_up_tokenization_spaces"] is False
    added = json.loads((trained / "tokenizer.json").read_text())["added_tokens"]
    assert {a["content"]: a["special"] for a in added} == {t: t in CONTROL_TOKENS for t in SPECIAL_TOKENS}


def test_training_is_deterministic(trained, tmp_path):
    src = trained.parent
    tok, stats = train_tokenizer([src / "a.txt", src / "b.jsonl"], 300, tmp_path / "again", show_progress=False)
    assert stats.files == 2 and stats.documents > 200
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (trained / "tokenizer.json").read_bytes()


def test_small_corpus_gives_fewer_tokens_not_an_error(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("ab ab ab\n")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "t.txt"), "--vocab-size", "5000",
                 str(tmp_path / "o"), "--quiet"]) == 0
    assert "no more merges" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "o")
    assert MIN_VOCAB_SIZE <= tok.vocab_size < 5000 and tok.decode(tok.encode("한국어 ab")) == "한국어 ab"


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("r1lab: error: "), err
    return err[0]


@pytest.mark.parametrize("name, content, needle", [
    ("empty.txt", b"", "is empty"),
    ("empty.jsonl", b"\n\n", "is empty"),
    ("numbers.jsonl", b'{"a": 1}\n[2, 3]\n', "no strings"),
    ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "line 2: not valid JSON"),
    ("missing.txt", None, "does not exist"),
    ("adir", "dir", "is a directory"),
])
def test_training_input_errors(tmp_path, capsys, name, content, needle):
    p = tmp_path / name
    if content == "dir":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    line = _one_line_error(capsys, ["tokenizer", "train", "--input", str(p), "--vocab-size", "300",
                                    str(tmp_path / "o")])
    assert needle in line and str(p) in line
    assert not (tmp_path / "o").exists()


def test_vocab_smaller_than_special_tokens_errors(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("hello\n")
    for n in ("5", "264", "-1"):
        line = _one_line_error(capsys, ["tokenizer", "train", "--input", str(tmp_path / "t.txt"), "--vocab-size", n,
                                        str(tmp_path / "o")])
        assert "too small" in line and "special tokens" in line and str(MIN_VOCAB_SIZE) in line


def test_training_refuses_non_empty_out_dir(trained, tmp_path, capsys):
    line = _one_line_error(capsys, ["tokenizer", "train", "--input", str(trained.parent / "a.txt"),
                                    "--vocab-size", "300", str(trained)])
    assert "not empty" in line


def test_unreadable_input_end_to_end(tmp_path):
    """The real entry point: one line on stderr, exit 2, no traceback."""
    p = subprocess.run([sys.executable, "-m", "r1lab.cli", "tokenizer", "train", "--input", str(tmp_path / "nope.txt"),
                        "--vocab-size", "300", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"r1lab: error: input file {tmp_path / 'nope.txt'} does not exist"]


# ------------------------------------------------------------------ loading other tokenizers
def _foreign_dir(tmp_path) -> Path:
    """A Hugging Face tokenizer directory that is not ours (no R1 tokens, dict-style specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["hello world, hello there"] * 20, trainer=trainer)
    d = tmp_path / "foreign"
    d.mkdir()
    backend.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "<|endoftext|>", "model_max_length": 128}))
    return d


def test_any_hf_tokenizer_directory_loads(tmp_path):
    tok = load_tokenizer(_foreign_dir(tmp_path))
    assert tok.bos_token == "<s>" and tok.bos_token_id == 1 and tok.eos_token_id == 0
    assert tok.special_ids[USER] is None and tok.think_token_id is None
    assert tok.decode(tok.encode("hello 世界")) == "hello 世界"
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<s>" + USER + "hi" + ASSISTANT + "<think>\n"
    again = load_tokenizer(tok.save(tmp_path / "saved"))
    assert again.encode("hello world<s>") == tok.encode("hello world<s>")
    saved = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 128 and saved["chat_template"] == official_chat_template()


def test_checkpoint_save_model_uses_tokenizer_save(tmp_path, shipped):
    from r1lab import build_model, save_model

    model = build_model(preset("tiny").replace(num_hidden_layers=1, num_nextn_predict_layers=0), seed=0)
    save_model(model, tmp_path / "ck", tokenizer=shipped)
    assert load_tokenizer(tmp_path / "ck").encode("2+2=4 <think>") == shipped.encode("2+2=4 <think>")


@pytest.mark.parametrize("setup, needle", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "no tokenizer.json"),
    (lambda d: (d.mkdir(), (d / "tokenizer.json").write_text("{not json")), "cannot read"),
    (lambda d: (d.mkdir(), (d / "tokenizer.json").write_text((SHIPPED_TOKENIZER_DIR / "tokenizer.json").read_text()),
                (d / "tokenizer_config.json").write_text("[1,")), "cannot read"),
])
def test_load_errors(tmp_path, setup, needle):
    d = tmp_path / "t"
    setup(d)
    with pytest.raises(TokenizerError, match=needle) as e:
        load_tokenizer(d)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ chat template
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Add 3 and 4."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "<think>\n2 plus 2 is 4.\n</think>\n\n4"}, {"role": "user", "content": "3+3?"}],
    # several </think>: only the text after the last one is kept
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a</think>b</think>  final answer  "},
     {"role": "user", "content": "again"}],
    # an unclosed <think> is kept as is (the template only looks for </think>)
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>never closed"}],
    # several system messages: the last wins, wherever it is
    [{"role": "system", "content": "first"}, {"role": "user", "content": "u1"},
     {"role": "system", "content": "second"}, {"role": "assistant", "content": "a1"},
     {"role": "user", "content": "u2"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}, {"role": "user", "content": "q2"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "한국어 질문 🤖\n\n  whitespace\t\n"},
     {"role": "assistant", "content": "<think>\n생각\n</think>\n\n답: $\\boxed{\\frac{1}{2}}$\n"},
     {"role": "user", "content": "你好 " + MATH_SUFFIX}],
    [{"role": "user", "content": "{{ bos_token }} {% if true %}jinja{% endif %} <｜User｜> </think> {#c#}"},
     {"role": "assistant", "content": "{{ x }}</think>{% raw %}"}],
    [{"role": "system", "content": "only a system prompt"}],
    [],
    [{"role": "assistant", "content": "assistant first"}, {"role": "user", "content": "then user"}],
    [{"role": "user", "content": "extra keys are ignored", "name": "bob"},
     {"role": "assistant", "content": "<think>r</think>ok", "reasoning_content": "ignored"}],
    [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
     {"role": "assistant", "content": "<think>\nlong\nreasoning\n</think>\n\na2"}, {"role": "user", "content": "u3"},
     {"role": "assistant", "content": "\n</think>\n"}],
]


@pytest.fixture(scope="module")
def official():
    """The official template, rendered by jinja2 the way transformers renders chat templates."""
    pytest.importorskip("jinja2")
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    return env.from_string(OFFICIAL_TEMPLATE.read_text(encoding="utf-8"))


def test_official_template_is_the_shipped_one():
    assert official_chat_template() == OFFICIAL_TEMPLATE.read_text(encoding="utf-8")
    assert "content.split('</think>')[-1]" in official_chat_template()


@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_template_matches_official_byte_for_byte(official, i, gen):
    msgs = CONVERSATIONS[i]
    expected = official.render(messages=msgs, bos_token=BOS, add_generation_prompt=gen)
    assert render_chat(msgs, add_generation_prompt=gen).encode() == expected.encode()


def test_template_without_add_generation_prompt_variable(official):
    msgs = CONVERSATIONS[3]
    assert render_chat(msgs) == official.render(messages=msgs, bos_token=BOS)


def test_template_shape():
    text = render_chat(CONVERSATIONS[3], add_generation_prompt=True)
    assert text == (BOS + "Answer briefly." + USER + "2+2?" + ASSISTANT + "\n\n4" + EOS + USER + "3+3?"
                    + ASSISTANT + "<think>\n")
    assert END_THINK not in text and "2 plus 2" not in text


@pytest.mark.parametrize("messages, needle", [
    ([{"role": "tool", "content": "42"}], "unsupported role 'tool'"),
    ([{"role": "user", "content": "x"}, {"role": "developer", "content": "x"}], "message 1: unsupported role"),
    ([{"content": "x"}], "unsupported role None"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}], "tool calls"),
    ([{"role": "user"}], "missing 'content'"),
    ([{"role": "user", "content": None}], "must be a string"),
    ([{"role": "system", "content": [{"type": "text", "text": "x"}]}], "must be a string"),
    (["hello"], "expected an object"),
    ("hello", "must be a list"),
    ({"role": "user", "content": "x"}, "must be a list"),
])
def test_template_rejects_what_it_cannot_render(messages, needle):
    with pytest.raises(TokenizerError, match=needle):
        render_chat(messages)


def test_r1_zero_prompt_and_math_suffix():
    assert r1_zero_prompt("What is 2+3?") == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
        "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
        "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
        "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
        "User: What is 2+3?. Assistant:")
    assert MATH_SUFFIX == "Please reason step by step, and put your final answer within \\boxed{}."
    assert math_prompt("1+1?") == "1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."


# ------------------------------------------------------------------ transformers parity
PARITY_TEXTS = ROUND_TRIP_TEXTS + [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
    r1_zero_prompt("What is 12 x 34?") + " <think> 12 x 34 = 408 </think> <answer>408</answer>",
]


@pytest.mark.parametrize("which", ["shipped", "trained"])
def test_transformers_autotokenizer_gives_identical_ids(which, trained):
    transformers = pytest.importorskip("transformers")
    path = SHIPPED_TOKENIZER_DIR if which == "shipped" else trained
    ours = load_tokenizer(path)
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    assert len(hf) == ours.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)
    for text in PARITY_TEXTS:
        ids = ours.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf(text)["input_ids"] == ours.encode(text, add_special_tokens=True) == ids
        assert hf.decode(ids) == ours.decode(ids) == text
        assert hf.decode(ids, skip_special_tokens=True) == ours.decode(ids, skip_special_tokens=True)
    # transformers refuses an empty conversation and drops None-valued keys before rendering
    # (the official template itself renders `content: None` as nothing; tested above)
    for msgs in [c for c in CONVERSATIONS if c and all(m["content"] is not None for m in c)]:
        for gen in (False, True):
            text = ours.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
            assert hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False) == text
            hf_ids = hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, return_dict=False)
            assert list(hf_ids) == ours.apply_chat_template(msgs, add_generation_prompt=gen)


# ------------------------------------------------------------------ verbs
def test_tokenize_verb(capsys, trained):
    assert main(["tokenize", "<think>the 12"]) == 0
    out = capsys.readouterr().out
    ids = load_tokenizer().encode("<think>the 12")
    assert out.startswith(f"{len(ids)} tokens") and "'<think>'" in out and "'1'" in out
    assert out.rstrip().endswith("ids: " + " ".join(map(str, ids))) and ids[0] == 5
    assert main(["tokenize", "--tokenizer", str(trained), "--json", "한 🤖"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ids"] == load_tokenizer(trained).encode("한 🤖") and "".join(res["pieces"]) != ""
    line = _one_line_error(capsys, ["tokenize", "--tokenizer", str(trained / "missing"), "x"])
    assert "does not exist" in line


def test_template_verb(capsys, tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps(CONVERSATIONS[3]))
    assert main(["template", str(f)]) == 0
    cap = capsys.readouterr()
    assert cap.out == render_chat(CONVERSATIONS[3], add_generation_prompt=True) and "tokens" in cap.err
    f.write_text(json.dumps({"messages": CONVERSATIONS[2]}))
    assert main(["template", "--no-generation-prompt", "--ids", str(f)]) == 0
    assert json.loads(capsys.readouterr().out) == load_tokenizer().apply_chat_template(CONVERSATIONS[2])
    f.write_text(json.dumps([{"role": "tool", "content": "x"}]))
    assert "unsupported role 'tool'" in _one_line_error(capsys, ["template", str(f)])
    f.write_text("[{")
    assert "not valid JSON" in _one_line_error(capsys, ["template", str(f)])
    assert "does not exist" in _one_line_error(capsys, ["template", str(tmp_path / "none.json")])


def test_init_copies_the_shipped_tokenizer_when_it_fits(tmp_path, capsys):
    assert main(["init", "--preset", "tiny", str(tmp_path / "tiny")]) == 0
    assert "shipped tokenizer, 2048 tokens" in capsys.readouterr().out
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tiny" / f).read_bytes() == (SHIPPED_TOKENIZER_DIR / f).read_bytes()
    assert main(["init", "--preset", "bench", str(tmp_path / "bench")]) == 0   # vocab 512 < 2048
    assert "no tokenizer" in capsys.readouterr().out and not (tmp_path / "bench" / "tokenizer.json").exists()


def test_init_with_tokenizer_flag(tmp_path, capsys, trained):
    assert main(["init", "--preset", "bench", "--tokenizer", str(trained), str(tmp_path / "a")]) == 0   # 320 <= 512
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (trained / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert "no tokenizer.json" in _one_line_error(capsys, ["init", "--preset", "tiny", "--tokenizer", str(tmp_path),
                                                           str(tmp_path / "b")])
    big = tmp_path / "big"
    big.mkdir()
    (big / "tokenizer.json").write_text((SHIPPED_TOKENIZER_DIR / "tokenizer.json").read_text())
    assert "vocab_size is 512" in _one_line_error(capsys, ["init", "--preset", "bench", "--tokenizer", str(big),
                                                           str(tmp_path / "c")])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_input(tmp_path, capsys):
    p = tmp_path / "secret.txt"
    p.write_text("text")
    p.chmod(0)
    line = _one_line_error(capsys, ["tokenizer", "train", "--input", str(p), "--vocab-size", "300",
                                    str(tmp_path / "o")])
    assert "cannot read" in line and "ermission" in line


def test_runtime_needs_neither_transformers_nor_jinja2():
    code = ("import sys; from r1lab.tokenizer import load_tokenizer; from r1lab.reasoning import split_reasoning; "
            "t = load_tokenizer(); t.apply_chat_template([{'role': 'user', 'content': 'hi'}], "
            "add_generation_prompt=True); split_reasoning('a</think>b'); "
            "heavy = {'transformers', 'jinja2'} & set(sys.modules); assert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_load_tokenizer_accepts_shipped_model_names(tmp_path, monkeypatch):
    """``load_tokenizer("r1zero-base")`` as ``load_model("r1zero-base")``: the shipped
    checkpoint's own tokenizer, from any working directory."""
    from r1lab.checkpoint import SHIPPED_DIR, SHIPPED_MODELS

    monkeypatch.chdir(tmp_path)
    for name in SHIPPED_MODELS:
        tok = load_tokenizer(name)
        assert Path(tok.source) == SHIPPED_DIR / name
        ref = load_tokenizer(SHIPPED_DIR / name)
        text = "digit sum of 2221330220 mod 4 <think>"
        assert tok.vocab_size == ref.vocab_size and tok.encode(text) == ref.encode(text)
        assert tok.decode(tok.encode(text)) == text
    (tmp_path / "r1zero-base").mkdir()  # a local directory of that name wins, as for load_model
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer("r1zero-base")


def test_load_tokenizer_missing_path_names_the_shipped_models(tmp_path):
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path / "nonexistent")
    msg = str(e.value)
    assert msg.startswith(f"tokenizer path {tmp_path / 'nonexistent'} does not exist (") and "r1zero-base" in msg
    assert "\n" not in msg

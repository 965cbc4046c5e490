"""Rejection sampling (issue 15 item 1; SPEC §5 stage 3): every filter drops exactly what it
names, on crafted completions; the output is what `r1lab sft` reads; the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from r1lab.train.rejection import (FILTERS, Candidate, FilterConfig, Group, RejectionError, filter_groups,
                                   jaccard, paragraphs, sft_record, shingles, statistics)

Q = "what is three plus four plus five"
GOOD = "three plus four is seven, seven plus five is twelve</think>The answer is \\boxed{12}."
LONG_REASONING = " ".join(f"step {i}: the total {3 * i} plus {i + 4} gives {4 * i + 4}, carry on" for i in range(1, 9))


def group(*cands: Candidate, started: bool = True, question: str = Q, gid: str = "g") -> Group:
    return Group(gid, question, [{"role": "user", "content": question}], list(cands), started_in_reasoning=started)


def ok(text: str = GOOD, tokens: int = 40, **kw) -> Candidate:
    return Candidate(text, kw.pop("correct", True), tokens, kw.pop("finish_reason", "stop"), 1.0)


def drops(g: Group, **cfg) -> list:
    filter_groups([g], FilterConfig(**cfg))
    return [c.dropped_by for c in g.candidates]


# --------------------------------------------------------------------------- one filter at a time
def test_each_filter_drops_exactly_what_it_names():
    cases = {
        "truncated": ok(finish_reason="length"),
        "format": ok("three plus four is seven and then twelve"),               # never closed: no answer
        "wrong": ok(GOOD.replace("12", "13"), correct=False),
        "too_short": ok(tokens=3),
        "too_long": ok(tokens=900),
        "language": ok("три плюс четыре семь, семь плюс пять двенадцать</think>The answer is \\boxed{12}."),
        "paragraph": ok("x" * 50 + " " + "word " * 100 + "\n\nshort closing paragraph</think>\\boxed{12}"),
        "code": ok("let me compute\n```python\nprint(3 + 4 + 5)\n```\nit prints twelve</think>\\boxed{12}"),
    }
    for name, cand in cases.items():
        g = group(ok(), cand)
        got = drops(g, min_tokens=5, max_tokens=500, max_paragraph_chars=300)
        assert got == [None, name], (name, got)
        # switched off, the same completion is kept
        off = {"truncated": {"drop_truncated": False}, "format": {"require_format": False},
               "wrong": {"require_correct": False}, "too_short": {"min_tokens": None},
               "too_long": {"max_tokens": None}, "language": {"min_language": None},
               "paragraph": {"max_paragraph_chars": None}, "code": {"drop_code_in_reasoning": False}}[name]
        cfg = {"min_tokens": 5, "max_tokens": 500, "max_paragraph_chars": 300, "dedup": False, "near_duplicate": None,
               **off}
        assert drops(group(ok(), cand), **cfg) == [None, None], name


def test_format_needs_reasoning_and_an_answer_after_it():
    assert drops(group(ok("</think>\\boxed{12}"))) == ["format"]                 # no reasoning
    assert drops(group(ok("three plus four plus five is twelve</think>"))) == ["format"]   # no answer
    # R1-Zero style: the completion opens <think> itself (the prompt did not)
    z = "<think> three plus four is seven and five more is twelve </think> <answer> 12 </answer>"
    assert drops(group(ok(z), started=False)) == [None]
    assert drops(group(ok("<think> </think> <answer> 12 </answer>"), started=False)) == ["format"]
    assert drops(group(ok("<answer> 12 </answer>"), started=False)) == ["format"]


def test_first_failing_filter_is_charged_and_counts_add_up():
    g = group(ok(GOOD.replace("12", "13"), correct=False, finish_reason="length"),   # truncated and wrong
              ok("no answer", correct=False),                                         # format and wrong
              ok())
    counts = filter_groups([g], FilterConfig())
    assert [c.dropped_by for c in g.candidates] == ["truncated", "format", None]
    assert counts == {**dict.fromkeys(FILTERS, 0), "truncated": 1, "format": 1}
    stats = statistics([g], counts, FilterConfig())
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["candidates"] == 3


def test_language_consistency_threshold():
    mixed = "three plus four is seven, семь plus five is twelve</think>\\boxed{12}"   # 1 word of 9 Cyrillic
    assert drops(group(ok(mixed))) == ["language"]                     # 8/9 = 0.89 < 0.95
    assert drops(group(ok(mixed)), min_language=0.85) == [None]
    cyr_q = "сколько будет три плюс четыре"
    assert drops(group(ok("три плюс четыре семь</think>\\boxed{7}"), question=cyr_q)) == [None]
    assert drops(group(ok(GOOD), question=cyr_q)) == ["language"]      # answered in the other script


def test_paragraphs_split_at_blank_lines():
    assert paragraphs("a b\n\n  \n c\n d\n\t\ne") == ["a b", "c\n d", "e"]
    two_short = ("p" * 200 + "\n\n" + "q" * 200 + "</think>\\boxed{12}")
    one_long = ("p" * 200 + "\n" + "q" * 200 + "</think>\\boxed{12}")
    assert drops(group(ok(two_short)), max_paragraph_chars=250) == [None]
    assert drops(group(ok(one_long)), max_paragraph_chars=250) == ["paragraph"]


def test_code_only_counts_inside_the_reasoning():
    in_answer = "twelve it is</think>```\n12\n```"
    assert drops(group(ok(in_answer))) == [None]


def test_exact_and_near_duplicates_within_a_prompt():
    base = LONG_REASONING + "</think>\\boxed{12}"
    spaced = base.replace(" ", "  ")                                     # same text, other whitespace
    one_word = base.replace("carry on", "go on", 1)                      # near duplicate
    other = "a different route: five plus four is nine, nine plus three is twelve</think>\\boxed{12}"
    g = group(ok(base), ok(spaced), ok(one_word), ok(other))
    assert drops(g) == [None, "duplicate", "near_duplicate", None]
    assert jaccard(shingles(base), shingles(one_word)) >= 0.9 > jaccard(shingles(base), shingles(other))
    assert drops(group(ok(base), ok(spaced), ok(one_word)), dedup=False, near_duplicate=None) == [None] * 3
    # the same completion for two different prompts is not a duplicate
    a, b = group(ok(base), gid="a"), group(ok(base), gid="b")
    filter_groups([a, b], FilterConfig())
    assert a.candidates[0].dropped_by is None and b.candidates[0].dropped_by is None


def test_pass_rate_window_and_per_prompt_cap():
    always = group(ok(), ok(GOOD + " "), gid="always")                   # 2/2
    never = group(ok(correct=False), ok(correct=False), gid="never")     # 0/2
    half = group(ok(), ok(correct=False), gid="half")                    # 1/2
    counts = filter_groups([always, never, half], FilterConfig(pass_rate_min=0.1, pass_rate_max=0.9))
    assert [c.dropped_by for c in always.candidates] == ["pass_rate"] * 2
    assert [c.dropped_by for c in never.candidates] == ["pass_rate"] * 2
    assert [c.dropped_by for c in half.candidates] == [None, "wrong"]
    assert counts["pass_rate"] == 4 and counts["wrong"] == 1
    texts = [f"route {w}: five plus {w} is twelve</think>\\boxed{12}" for w in ("seven", "one two", "x y z")]
    capped = group(*(ok(t) for t in texts))
    assert drops(capped, keep_per_prompt=2, near_duplicate=None) == [None, None, "per_prompt_cap"]


def test_bad_filter_settings_are_one_line_errors():
    for kw in ({"pass_rate_min": 0.8, "pass_rate_max": 0.2}, {"min_language": 1.5}, {"near_duplicate": -0.1},
               {"max_paragraph_chars": 0}, {"min_tokens": 10, "max_tokens": 5}, {"keep_per_prompt": True}):
        with pytest.raises(RejectionError) as e:
            FilterConfig(**kw)
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- the output
def test_sft_record_is_read_by_the_sft_loader_with_the_reasoning_trained(tmp_path):
    from r1lab.tokenizer import load_tokenizer
    from r1lab.train.data import load_conversations

    g = group(ok())
    rec = sft_record(g, g.candidates[0], "demo")
    assert rec["messages"][-1]["content"] == ("<think>\nthree plus four is seven, seven plus five is twelve\n"
                                              "</think>\n\nThe answer is \\boxed{12}.")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    tok = load_tokenizer("r1zero-base")
    conv = load_conversations([str(path)], tok)[0]
    trained = tok.decode([t for t, lab in zip(conv.ids, conv.labels) if lab != -100])
    assert "seven plus five is twelve" in trained and "\\boxed{12}" in trained and Q not in trained


def test_cli_end_to_end_on_the_shipped_base(tmp_path):
    """Real sampling with the engine on r1zero-base (its task and options from r1lab.json): the
    kept records are worked, correct solutions; the report's counts add up."""
    out = tmp_path / "rs" / "traces.jsonl"
    r = subprocess.run([sys.executable, "-m", "r1lab.cli", "rejection-sample", "--model", "r1zero-base",
                        "--task", "chain_add", "--k", "16", "--limit", "12", "--temperature", "1.0",
                        "--max-tokens", "64", "--output", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((tmp_path / "rs" / "traces.stats.json").read_text())
    assert stats["candidates"] == 16 * 12 and stats["kept"] + sum(stats["dropped"].values()) == stats["candidates"]
    assert (tmp_path / "rs" / "traces.stats.md").read_text().startswith("# Rejection sampling:")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == stats["kept"] >= 1, stats["dropped"]
    from r1lab.tasks import get_task
    task = get_task("chain_add", digits=1, mod=4, solution="prefix", terms=10, wording="digit_sum")
    by_id = {ex.id: ex for ex in task.load("train", 12)}
    for rec in records:
        reply = rec["messages"][-1]["content"]
        assert reply.startswith("<think>\n") and "\n</think>\n\n" in reply
        reasoning = reply.split("</think>")[0]
        assert "so the answer is" in reasoning                     # a worked solution, not a direct answer
        ex = by_id[rec["meta"]["id"]]
        assert task.score(["<think>" + reply[len("<think>\n"):].replace("\n</think>\n\n", " </think> ")], [ex]) == [1.0]


@pytest.mark.parametrize("args, needle", [
    (["--task", "chain_add", "--split", "validation"], "has no split 'validation'"),
    (["--task", "no_such_task"], "no_such_task"),
    (["--task", "chain_add", "--pass-rate", "0.9,0.1"], "--pass-rate"),
    (["--task", "chain_add", "--min-language", "2"], "--min-language"),
])
def test_cli_bad_input_is_one_line(args, needle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "r1lab.cli", "rejection-sample", "--model", "r1zero-base", *args,
                        "--output", str(tmp_path / "o.jsonl"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-1500:]
    last = r.stderr.strip().splitlines()[-1]      # argparse prints its usage first; ours is one line
    assert needle in last and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_output_that_is_a_directory_is_refused(tmp_path):
    r = subprocess.run([sys.executable, "-m", "r1lab.cli", "rejection-sample", "--model", "r1zero-base",
                        "--task", "chain_add", "--output", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr

"""Reasoning/answer split, final-answer extraction, and the streaming parser, which must agree
with `split_reasoning` for every way of cutting a completion into chunks."""

import itertools
import random

import pytest

from r1lab.reasoning import (
    ReasoningStreamParser, extract_answer, last_boxed, prompt_opens_reasoning, split_reasoning,
)
from r1lab.tokenizer import load_tokenizer, r1_zero_prompt, render_chat


@pytest.mark.parametrize("text, expected", [
    ("I add 2 and 2.\n</think>\n\nThe answer is 4.", ("I add 2 and 2.", "The answer is 4.")),   # prompt opened it
    ("<think>\nI add 2 and 2.\n</think>\n\n4", ("I add 2 and 2.", "4")),                        # model opened it
    ("  \n <think>  r  </think>  a  ", ("r", "a")),
    ("<think>\nstill thinking when the budget ran out", ("still thinking when the budget ran out", "")),
    ("no tags at all", ("no tags at all", "")),
    ("</think>answer only", ("", "answer only")),
    ("<think></think>", ("", "")),
    ("", ("", "")),
    ("   \n\t ", ("", "")),
    ("a</think>b</think>c", ("a", "b</think>c")),          # the first </think> ends the reasoning
    ("<think>a<think>b</think>c", ("a<think>b", "c")),      # a nested opening tag is text
    ("x <think> y </think> z", ("x <think> y", "z")),      # <think> only counts at the start
    ("<think> a </think> <answer> 5 </answer>", ("a", "<answer> 5 </answer>")),
    ("한국어 생각</think>\n답 🤖", ("한국어 생각", "답 🤖")),
])
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


@pytest.mark.parametrize("text, expected", [
    (" <think> r </think> <answer>5</answer>", ("r", "<answer>5</answer>")),   # R1-Zero: the model opens the tag
    ("no thinking, just 5", ("", "no thinking, just 5")),
    ("a</think>b", ("", "a</think>b")),
    ("\n<think>unclosed", ("unclosed", "")),
])
def test_split_reasoning_when_prompt_did_not_open_it(text, expected):
    assert split_reasoning(text, started_in_reasoning=False) == expected


def test_prompt_opens_reasoning():
    assert prompt_opens_reasoning(render_chat([{"role": "user", "content": "q"}], add_generation_prompt=True))
    assert not prompt_opens_reasoning(r1_zero_prompt("q"))
    assert not prompt_opens_reasoning(render_chat([{"role": "user", "content": "q"}]))


@pytest.mark.parametrize("text, expected", [
    ("The answer is $\\boxed{42}$.", "42"),
    ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{{a}{b}}", "{a}{b}"),
    ("\\fbox{7} and later \\boxed{6}", "6"),
    ("\\boxed{6} and later \\fbox{ 7 }", "7"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{\\}}", "\\}"),
    ("\\boxed {x^2}", "x^2"),
    ("so $\\boxed 5$.", "5"),
    ("\\boxed{12", None),                        # truncated: the last box never closes
    ("\\boxed{1} then \\boxed{2", None),
    ("no box here", None),
    ("\\boxed", None),
    ("<answer>17</answer>", "17"),
    ("<answer> 3 </answer> ... <answer>\n 4 \n</answer>", "4"),
    ("<answer>The result is \\boxed{9}.</answer>", "9"),
    ("\\boxed{1} <answer>2</answer>", "2"),
    ("<answer>unclosed \\boxed{3}", "3"),
    ("</answer> stray <answer>", None),
    ("<answer></answer>", ""),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_on_math500_style_solution():
    sol = ("Thus $f(x) = \\left\\{ \\begin{array}{cl} 1 \\end{array} \\right.$ and "
           "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$")
    assert last_boxed(sol) == "\\left( 3, \\frac{\\pi}{2} \\right)"


# ------------------------------------------------------------------ the streaming parser
COMPLETIONS = [
    "I add 2 and 2.\n</think>\n\nThe answer is \\boxed{4}.",
    "<think>\nr1\n</think>\n\na1",
    "  <think> x </think>  y  ",
    "<think>unclosed reasoning",
    "plain",
    "</think>",
    "a</think>b</think>c",
    "<thin>k</thinx></think>",
    "<<think>>< /think></think><",
    "</think\n</think >\t</think>\n",
    "<think>a<think>b</think>c",
    "\n\n<think>\n\n</think>\n\n",
    " <think> r </think> <answer> 5 </answer>",
    "생각 🤖</think>답",
    "",
    " ",
    "<",
    "</",
    "<think",
]
SHORT = [c for c in COMPLETIONS if len(c) <= 13]


def _run(chunks, started):
    p = ReasoningStreamParser(started_in_reasoning=started)
    deltas = []
    for c in chunks:
        deltas += p.feed(c)
    deltas += p.finish()
    assert all(d.text for d in deltas), deltas                          # no empty deltas
    kinds = [d.kind for d in deltas]
    assert kinds == sorted(kinds, key=lambda k: k == "answer"), kinds   # reasoning never after answer
    r = "".join(d.text for d in deltas if d.kind == "reasoning")
    a = "".join(d.text for d in deltas if d.kind == "answer")
    assert (r, a) == (p.reasoning, p.answer)
    return r, a


def _cuts(text, points):
    bounds = [0, *points, len(text)]
    return [text[i:j] for i, j in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("started", [True, False])
@pytest.mark.parametrize("text", COMPLETIONS)
def test_stream_matches_split_for_every_one_or_two_cuts(text, started):
    expected = split_reasoning(text, started_in_reasoning=started)
    n = len(text)
    assert _run([text], started) == expected
    for i in range(n + 1):
        assert _run(_cuts(text, [i]), started) == expected, (text, i)
        for j in range(i, n + 1):
            assert _run(_cuts(text, [i, j]), started) == expected, (text, i, j)


@pytest.mark.parametrize("started", [True, False])
@pytest.mark.parametrize("text", SHORT)
def test_stream_matches_split_for_every_partition(text, started):
    """All 2^(n-1) ways to cut a short completion into non-empty chunks."""
    expected = split_reasoning(text, started_in_reasoning=started)
    for k in range(len(text)):
        for points in itertools.combinations(range(1, len(text)), k):
            assert _run(_cuts(text, list(points)), started) == expected, (text, points)


def test_stream_matches_split_for_random_chunkings():
    rng = random.Random(0)
    alphabet = ["<think>", "</think>", "<", "/", "think", ">", "</", "<th", "ink>", " ", "\n", "a", "b", "답"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        started = rng.random() < 0.5
        points = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) if len(text) > 1 else []
        assert _run(_cuts(text, points) + [""], started) == split_reasoning(text, started), (text, points)


def test_stream_emits_as_it_goes():
    p = ReasoningStreamParser()
    assert p.feed("<think>\n") == []
    assert p.feed("Let me add") == [("reasoning", "Let me add")]
    assert p.feed(" 2 and 2. \n</th") == [("reasoning", " 2 and 2.")]   # trailing space and "</th" held back
    assert p.in_reasoning
    assert p.feed("ink>\n\nIt is ") == [("answer", "It is")]
    assert not p.in_reasoning
    assert p.feed("4.\n") == [("answer", " 4.")]
    assert p.finish() == []
    assert (p.reasoning, p.answer) == ("Let me add 2 and 2.", "It is 4.")
    with pytest.raises(RuntimeError):
        p.feed("more")
    assert p.finish() == []


def test_stream_held_partial_tag_is_released_by_finish():
    p = ReasoningStreamParser()
    assert p.feed("abc </thi") == [("reasoning", "abc")]
    assert p.finish() == [("reasoning", " </thi")]
    p = ReasoningStreamParser(started_in_reasoning=False)
    assert p.feed("  <thi") == []
    assert p.finish() == [("answer", "<thi")]


def test_stream_over_real_token_pieces():
    """Chunks as the engine produces them: one decoded token at a time from the shipped tokenizer."""
    tok = load_tokenizer()
    for text in ["Okay, 12 + 30 = 42.\n</think>\n\nThe answer is $\\boxed{42}$.",
                 "<think>\nhmm</think><answer>7</answer>", "unfinished reasoning 1 2 3"]:
        ids = tok.encode(text)
        assert tok.end_think_token_id in ids or "</think>" not in text
        pieces = tok.pieces(ids)
        assert "".join(pieces) == text
        r, a = _run(pieces, True)
        assert (r, a) == split_reasoning(text)
    assert extract_answer(split_reasoning("x</think>The answer is $\\boxed{42}$.")[1]) == "42"

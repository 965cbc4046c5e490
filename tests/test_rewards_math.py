"""Math answer checking (r1lab/rewards/math.py), the reward registry and the shape rewards.

The big table freezes our equivalence rules (see the module docstring of rewards/math.py):
LaTeX/number forms, units (ignored), percents (lenient), equations (right-hand side),
answers only in the reasoning (0), several boxes (the last counts). The robustness tests
feed hostile completions and kill/stop workers: the caller must get 0 for those items, in
bounded time, and the pool must still verify a normal pair afterwards.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from r1lab.reasoning import split_reasoning
from r1lab.rewards import (
    REWARDS, CombinedReward, RewardError, RewardSpec, accuracy, get_reward, parse_reward_specs, register_reward,
)
from r1lab.rewards.format import (
    dominant_script, format_ok, language_consistency_reward, overlong_penalty, overlong_reward, script_words,
    tag_count_reward,
)
from r1lab.rewards.math import (
    MAX_ANSWER_CHARS, Verifier, _fast_path, _parse_inputs, accuracy_many, accuracy_reward, answer_key,
    equivalent, final_answer, get_verifier, normalize_answer,
)
from r1lab.tasks.base import Example


def B(answer: str) -> str:
    """A completion in R1's form (the prompt opened <think>) whose answer part boxes ``answer``."""
    return f"Let me work it out. 2+2=4, so ...</think>\nThe final answer is $\\boxed{{{answer}}}$."


# (completion, gold, expected score)
CASES = [
    # --- equivalent LaTeX / number forms
    (B(r"\frac12"), "0.5", 1.0),
    (B(r"\frac{1}{2}"), "1/2", 1.0),
    (B("1/2"), r"\frac{1}{2}", 1.0),
    (B(r"\dfrac{1}{2}"), "0.5", 1.0),
    (B("0.5"), r"\frac12", 1.0),
    (B(r"\tfrac{1}{2}"), r"\frac{1}{2}", 1.0),
    (B(r"-\frac{1}{2}"), "-0.5", 1.0),
    (B(r"\frac{-1}{2}"), r"-\frac12", 1.0),
    (B(r"\frac{7}{2}"), "3.5", 1.0),
    (B("1.5"), r"\frac{3}{2}", 1.0),
    (B("0.333333"), r"\frac13", 1.0),
    (B("2^{10}"), "1024", 1.0),
    (B("10^6"), "1000000", 1.0),
    (B(r"\sqrt{8}"), r"2\sqrt{2}", 1.0),
    (B(r"2\sqrt{2}"), r"\sqrt{8}", 1.0),
    (B(r"3\sqrt{3}"), r"\sqrt{27}", 1.0),
    (B(r"5\sqrt{2}"), r"\sqrt{50}", 1.0),
    (B(r"\frac{1}{\sqrt{2}}"), r"\frac{\sqrt{2}}{2}", 1.0),
    (B(r"\frac{\sqrt{3}}{2}"), r"\frac{1}{2}\sqrt{3}", 1.0),
    (B("x^2+2x+1"), "(x+1)^2", 1.0),
    # intervals, sets, tuples, matrices
    (B("[1,3)"), "[1, 3)", 1.0),
    (B(r"(-\infty, 2]"), r"(-\infty,2]", 1.0),
    (B(r"\{1,2,3\}"), r"\{3,2,1\}", 1.0),
    (B(r"\left\{1, \frac{1}{2}\right\}"), r"\{\frac12, 1\}", 1.0),
    (B(r"(3,\frac{\pi}{2})"), r"\left( 3, \frac{\pi}{2} \right)", 1.0),
    (B(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"), r"\begin{pmatrix}1\\2\end{pmatrix}", 1.0),
    # pi
    (B(r"2\pi"), r"\pi \cdot 2", 1.0),
    (B(r"\frac{\pi}{2}"), r"\pi/2", 1.0),
    (B(r"\frac{9}{4}\pi"), r"\frac{9\pi}{4}", 1.0),
    (B(r"\pi"), "3.14159265", 1.0),
    # --- units and percents: our rule is that LaTeX units, degrees and \$ are ignored,
    # and a percent equals both its number and its fraction
    (B(r"10\text{ cm}"), "10", 1.0),
    (B("10"), r"10\text{ cm}", 1.0),
    (B(r"90^\circ"), "90", 1.0),
    (B(r"\$18"), "18", 1.0),
    (B("18 dollars"), "18", 1.0),
    (B(r"50\%"), "50", 1.0),
    (B("50"), r"50\%", 1.0),
    (B("0.5"), r"50\%", 1.0),
    # --- equations: the right-hand side is compared
    (B("x=2"), "2", 1.0),
    (B("2"), "x=2", 1.0),
    (B("k=-1"), "-1", 1.0),
    (B("x=3"), "2", 0.0),
    (B("x=2"), "y=2", 0.0),
    # --- wrong answers that look close
    (B("0.51"), "1/2", 0.0),
    (B("-3"), "3", 0.0),
    (B("3"), "-3", 0.0),
    (B("0.33"), r"\frac13", 0.0),
    (B("(1,3]"), "[1,3)", 0.0),
    (B(r"\{1,2\}"), r"\{1,2,3\}", 0.0),
    (B(r"2\pi"), r"\pi", 0.0),
    (B("1001"), "1000", 0.0),
    (B("27.5"), "27", 0.0),
    (B("12"), "12.5", 0.0),
    (B(r"\sqrt{2}"), "2", 0.0),
    (B("5.0001"), "5", 0.0),
    (B("2x"), "2", 0.0),
    # hedging between several values earns nothing
    (B("3, 4"), "4", 0.0),
    (B("3 or 4"), "4", 0.0),
    (B(r"3 \text{ or } 4"), "4", 0.0),
    # --- gsm8k commas, AMC floats, AIME leading zeros, signs
    (B("1,000"), "1000", 1.0),
    (B("1000"), "1,000", 1.0),
    (B("1{,}000"), "1000", 1.0),
    (B(r"1\,000"), "1000", 1.0),
    (B("1 000"), "1000", 0.0),              # a plain space is not a thousands separator
    (B("1 2"), "12", 0.0),
    (B(r"\$1,000"), "1000", 1.0),
    ("Compute.</think>So she makes \\boxed{1,000} dollars a week.", "1000", 1.0),
    (B("27"), "27.0", 1.0),
    (B("27.0"), "27", 1.0),
    (B("36"), "36.0", 1.0),
    (B("25"), "025", 1.0),
    (B("-0"), "0", 1.0),
    (B("+5"), "5", 1.0),
    # --- words and choices
    (B(r"\text{Monday}"), r"\text{Monday}", 1.0),
    (B("Monday"), r"\text{Monday}", 1.0),
    (B(r"\text{(C)}"), "C", 1.0),
    (B(r"\textbf{(C)}"), r"\text{(C)}", 1.0),
    # --- nested braces
    (B(r"\frac{\sqrt{3}}{2}"), r"\frac{\sqrt3}{2}", 1.0),
    (B(r"\frac{\frac{1}{2}}{\frac{3}{4}}"), r"\frac{2}{3}", 1.0),
    # --- where the answer must be: the answer part only, the last box
    (r"so the answer is \boxed{5}</think>I am not sure.", "5", 0.0),
    (r"\boxed{5} and the reasoning never closes", "5", 0.0),
    (r"<think>maybe \boxed{5}</think>\boxed{6}", "5", 0.0),
    (r"<think>maybe \boxed{5}</think>\boxed{6}", "6", 1.0),
    (r"done</think>\boxed{3} wait, no: \boxed{4}", "4", 1.0),
    (r"done</think>\boxed{3} wait, no: \boxed{4}", "3", 0.0),
    # --- <answer> tags (the "auto" mode reads them)
    ("<think>6*7</think> <answer>42</answer>", "42", 1.0),
    (r"<think>r</think> <answer>The answer is \boxed{7}</answer>", "7", 1.0),
    ("<think>r</think> <answer>41</answer> and later <answer>42</answer>", "42", 1.0),
    # --- no usable answer
    ("done</think>I don't know", "5", 0.0),
    (r"done</think>\boxed{}", "5", 0.0),
    (r"done</think>\boxed{5", "5", 0.0),
    ("", "5", 0.0),
]


def test_the_table_is_big_and_balanced():
    assert len(CASES) >= 60
    assert sum(e == 1.0 for _, _, e in CASES) >= 30 and sum(e == 0.0 for _, _, e in CASES) >= 20


@pytest.fixture(scope="module")
def table_scores():
    return accuracy_many([c for c, _, _ in CASES], [g for _, g, _ in CASES])


@pytest.mark.parametrize("i", range(len(CASES)), ids=lambda i: f"{i}")
def test_accuracy_table(table_scores, i):
    completion, gold, expected = CASES[i]
    assert table_scores[i] == expected, (completion[-60:], gold)


def test_accuracy_one_at_a_time_agrees_with_the_batch(table_scores):
    for i in (0, 13, 45, 60, 80):
        assert accuracy(CASES[i][0], CASES[i][1]) == table_scores[i]


def test_math_verify_itself_accepts_the_fast_path_pairs():
    # The fast path must not change any score: run pairs it decides through math-verify too.
    pairs = [("27", "27.0"), ("025", "25"), ("1,000", "1000"), ("-0", "0"), ("+5", "5"),
             (r"\left( 1, 2 \right)", "(1,2)"),
             ("7", "8"), ("-3", "3")]
    v = get_verifier()
    assert v.verify_many(pairs) == [1.0] * 6 + [0.0] * 2
    v.fast_path = False
    try:
        assert v.verify_many(pairs) == [1.0] * 6 + [0.0] * 2
    finally:
        v.fast_path = True


# ---------------------------------------------------------------------- extraction
def test_started_in_reasoning():
    # R1 chat prompt (opened <think>): text with no </think> is all reasoning.
    assert accuracy(r"\boxed{5}", "5") == 0.0
    assert accuracy(r"\boxed{5}", "5", started_in_reasoning=True) == 0.0
    # R1-Zero / plain prompts: text without tags is all answer.
    assert accuracy(r"\boxed{5}", "5", started_in_reasoning=False) == 1.0
    assert accuracy("<answer>5</answer>", "5", started_in_reasoning=False) == 1.0
    # A completion that opens its own <think> is split the same way in both cases.
    for s in (True, False):
        assert accuracy(r"<think>\boxed{4}</think> <answer>5</answer>", "5", started_in_reasoning=s) == 1.0
        assert accuracy(r"<think>\boxed{5} and never closed", "5", started_in_reasoning=s) == 0.0


@pytest.mark.parametrize("mode, completion, expected", [
    ("boxed", r"r</think>\boxed{1} then \boxed{2}", "2"),
    ("boxed", r"r</think><answer>7</answer>", None),
    ("boxed", r"\boxed{3}</think>no box here", None),
    ("answer_tag", r"r</think><answer> 7 </answer>", "7"),
    ("answer_tag", r"r</think><answer>so \boxed{8}</answer>", "8"),
    ("answer_tag", r"r</think>\boxed{9}", None),
    ("answer_tag", r"r</think></answer> 7 <answer>", None),
    ("auto", r"r</think><answer>7</answer> \boxed{9}", "7"),
    ("auto", r"r</think>\boxed{9}", "9"),
    ("last_number", "r 99</think>She pays 3 + 4 = 7 dollars, then 1,250.5 more.", "1250.5"),
    ("last_number", "r 99</think>no numbers", None),
    ("last_number", "r</think>-12", "-12"),
])
def test_extract_modes(mode, completion, expected):
    assert final_answer(completion, mode) == expected


def test_extract_mode_scoring_and_unknown_mode():
    c = "He has 5 apples and buys 37 more.</think>In total 42 apples."
    assert accuracy(c, "42") == 0.0
    assert accuracy(c, "42", extract="last_number") == 1.0
    assert accuracy(r"r</think>\boxed{42}", "42", extract="answer_tag") == 0.0
    with pytest.raises(RewardError, match="unknown extract mode"):
        accuracy(c, "42", extract="first_number")


@pytest.mark.parametrize("answer, gold, expected", [
    ("27", "27.0", 1.0), ("025", "25", 1.0), ("1,000", "1000", 1.0), ("$5$", "5", 1.0),
    (r"\left(1,2\right)", "(1, 2)", 1.0), (r"\dfrac{1}{2}", r"\frac12", None), ("7", "8", 0.0),
    ("7", "7.5", None), ("0.5", r"\frac12", None), ("1,2", "12", None), ("1 2", "12", None), ("a b", "ab", 1.0),
])
def test_fast_path(answer, gold, expected):
    assert _fast_path(answer, gold) == expected


@pytest.mark.parametrize("answer, expected", [
    ("5", ["$5$"]),
    ("18 dollars", ["18 dollars", "$18 dollars$"]),        # prose with one number: free text first
    ("3 or 4", ["$3 or 4$"]),                              # two numbers: LaTeX only
    (r"\text{Monday}", [r"$\text{Monday}$"]),
    ("2xy", ["$2xy$"]),
    ("$x$ and $y$", ["$x$ and $y$"]),                      # own delimiters: as is
    ("1\\,000\n+ 1", ["$1000 + 1$"]),                      # thin space in a number, newline
])
def test_parse_inputs(answer, expected):
    assert _parse_inputs(answer) == expected


# ---------------------------------------------------------------------- voting keys
@pytest.mark.parametrize("completion, key", [
    (B("27.0"), "27"), (B("1,000"), "1000"), (B("007"), "7"), (B(".50"), "0.5"), (B("-0.0"), "0"),
    (B("-1.250"), "-1.25"), (B(r"\dfrac{1}{2}"), r"\frac{1}{2}"), (B(r" 90^\circ "), "90"),
    (B(r"\left( 3, \frac{\pi}{2} \right)"), r"(3,\frac{\pi}{2})"), (B(r"x = 2"), "x=2"),
    ("no closing think \\boxed{5}", None), ("r</think>nothing", None), (B("5\udcff"), None),
])
def test_answer_key(completion, key):
    assert answer_key(completion) == key


def test_answer_key_modes_and_normalize():
    assert answer_key("r</think><answer>1,000</answer>", extract="answer_tag") == "1000"
    assert answer_key(r"\boxed{12}", started_in_reasoning=False) == "12"
    assert answer_key(B("x" * (MAX_ANSWER_CHARS + 1))) is None
    assert normalize_answer("$ 3.10 $") == "3.1"


def test_equivalent():
    assert equivalent(r"\frac12", "0.5")
    assert equivalent("0.5", r"\frac{1}{2}")
    assert equivalent(r"2\sqrt{2}", r"\sqrt{8}")
    assert equivalent("27", "27.0")
    assert not equivalent("2", "3")
    assert not equivalent(r"\frac12", "0.51")
    assert get_verifier().equivalent_many([("1/2", "0.5"), ("1", "2"), (None, "1")]) == [True, False, False]


# ---------------------------------------------------------------------- robustness
def test_adversarial_completions_score_zero_in_bounded_time():
    hostile = [
        r"r</think>\boxed{9^{9^{9^{9}}}}",                                        # a tower of powers
        "r</think>" + r"\frac{1}{2}+\sqrt{\int_0^1 x^2 dx}" * 6500,                # ~200 kB of LaTeX, no box
        "r</think>\\boxed{" + r"\frac{1}{2}+\sqrt{\int_0^1 x^2 dx}" * 6500 + "}",  # ~200 kB inside a box
        "r</think>\\boxed{" + "{" * 10000 + "1" + "}" * 10000 + "}",               # 10k nested braces
        "r</think>\\boxed{5\udcff}",                                               # lone surrogates
        "r</think>\\boxed{\ud800 5}",
        b"r</think>\\boxed{\xff\xfe 5}",                                           # invalid UTF-8 bytes
    ]
    assert len(hostile[1]) > 200_000
    t0 = time.monotonic()
    scores = accuracy_many(hostile, ["5"] * len(hostile))
    assert time.monotonic() - t0 < 30
    assert scores == [0.0] * len(hostile)
    # the pool still works, and undecodable text in the *reasoning* does no harm
    assert accuracy(B(r"\frac12"), "0.5") == 1.0
    assert accuracy("bad \udcff bytes in thought</think>\\boxed{5}", "5") == 1.0
    assert split_reasoning("\udcff</think>x") == ("\udcff", "x")


def test_a_killed_worker_is_replaced():
    v = get_verifier()
    assert v.verify(r"\frac12", "0.5") == 1.0
    pid = v.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)                  # killed while idle
    time.sleep(0.2)
    assert v.verify_many([(r"\frac12", "0.5"), ("2^{10}", "1024")]) == [1.0, 1.0]
    assert pid not in v.worker_pids()


def test_stuck_and_crashed_workers_score_zero_and_are_replaced():
    v = Verifier(workers=1, parse_timeout=1, verify_timeout=1, hard_timeout=3, warmup=False)
    try:
        assert v.verify("1/2", "0.5") == 1.0
        # A stopped worker is like one stuck in C code no alarm can interrupt: the hard
        # timeout kills it and the item scores 0.
        pid = v.worker_pids()[0]
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        assert v.verify("1/2", "0.5") == 0.0
        assert 2.5 < time.monotonic() - t0 < 20
        assert v.stats["timeouts"] == 1 and pid not in v.worker_pids()
        assert v.verify("1/2", "0.5") == 1.0          # a fresh worker took over

        # A worker that dies holding an item: that item scores 0, the next ones go on.
        pid = v.worker_pids()[0]
        os.kill(pid, signal.SIGSTOP)                  # so it cannot answer before it dies
        out: list = []
        t = threading.Thread(target=lambda: out.append(v.verify_many([("1/2", "0.5"), (r"\sqrt{8}", r"2\sqrt{2}")])))
        t.start()
        time.sleep(0.5)                               # the first item is in its pipe by now
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        assert out == [[0.0, 1.0]]
        assert v.stats["crashes"] == 1 and v.stats["timeouts"] == 1 and pid not in v.worker_pids()
    finally:
        v.close()
    assert v.worker_pids() == []


def test_verifier_validates_its_timeouts():
    with pytest.raises(ValueError, match="whole number"):
        Verifier(parse_timeout=0.5)
    with pytest.raises(ValueError, match="longer than"):
        Verifier(parse_timeout=5, verify_timeout=5, hard_timeout=5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_leaves_the_parent_workers_alone():
    v = get_verifier()
    assert v.verify(r"\frac12", "0.5") == 1.0
    pids = v.worker_pids()
    child = os.fork()
    if child == 0:                                 # the child: the parent's workers are not ours
        code = 1
        try:
            code = 0 if get_verifier().worker_pids() == [] and accuracy(B("27"), "27.0") == 1.0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert v.worker_pids() == pids and v.verify("2^{10}", "1024") == 1.0


def test_no_worker_outlives_the_interpreter():
    code = ("from r1lab.rewards.math import Verifier\n"
            "v = Verifier(workers=1, warmup=False)\n"
            "assert v.verify('1/2', '0.5') == 1.0\n"
            "print(v.worker_pids()[0], flush=True)\n")        # exits without close()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"     # a zombie is dead
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------- registry
def _ex(question="What is 6*7?", gold="42", **meta):
    return Example(id="t", question=question, gold=gold, meta=meta)


def test_registry_names_and_lookup():
    for name in ("accuracy", "format", "tag_count", "language_consistency", "overlong"):
        assert get_reward(name) is REWARDS[name]
    assert get_reward("accuracy") is accuracy_reward
    with pytest.raises(RewardError, match=r"unknown reward 'acurracy'; known: .*accuracy"):
        get_reward("acurracy")
    with pytest.raises(ValueError, match="registered twice"):
        register_reward("accuracy")(lambda c, e: [])


def test_reward_spec_validation():
    assert RewardSpec("format", 0.5, {"style": "r1"}).weight == 0.5
    with pytest.raises(RewardError, match="unknown reward"):
        RewardSpec("nope")
    for bad in (float("nan"), math.inf, "1", True, None):
        with pytest.raises(RewardError, match="weight"):
            RewardSpec("accuracy", bad)
    with pytest.raises(RewardError, match=r"unknown option\(s\) 'stlye'.*known: .*style"):
        RewardSpec("format", 1.0, {"stlye": "r1"})


def test_parse_reward_specs_forms():
    a = parse_reward_specs({"accuracy": 1.0, "format": 0.1})
    b = parse_reward_specs([{"name": "accuracy"}, {"name": "format", "weight": 0.1}])
    c = parse_reward_specs({"accuracy": {"weight": 1}, "format": {"weight": 0.1, "options": {}}})
    d = parse_reward_specs([{"accuracy": 1.0}, {"format": {"weight": 0.1}}])       # YAML "- accuracy: 1.0"
    assert a == b == c == d == [RewardSpec("accuracy", 1.0), RewardSpec("format", 0.1)]
    assert parse_reward_specs("accuracy") == [RewardSpec("accuracy")]
    for bad in ([], None, [{"weight": 1}], [{"name": "accuracy", "wieght": 1}], {"format": {"weigth": 1}}, [3]):
        with pytest.raises(RewardError):
            parse_reward_specs(bad)


def test_combined_reward_weights_and_context():
    comps = [
        "<think>6*7=42</think> <answer>42</answer>",          # right, well formed
        "<think>hmm</think> <answer>41</answer>",             # wrong, well formed
        "42",                                                  # right answer, no tags
    ]
    exs = [_ex()] * 3
    combined = CombinedReward([
        {"name": "accuracy", "weight": 1.0, "options": {"started_in_reasoning": False}},
        {"name": "format", "weight": 0.5},
        {"name": "overlong", "weight": 2.0, "options": {"max_len": 100, "cache": 20}},
    ])
    total, per = combined(comps, exs, num_tokens=[10, 90, 200], unused_context="ignored")
    assert per == {"accuracy": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0], "overlong": [0.0, -0.5, -1.0]}
    assert total == [1.5, 0.5 - 1.0, -2.0]
    assert "accuracy" in repr(combined)
    with pytest.raises(RewardError, match="listed twice"):
        CombinedReward([{"name": "format"}, {"name": "format", "weight": 2.0}])
    with pytest.raises(RewardError, match="3 completions but 2 examples"):
        combined(comps, exs[:2], num_tokens=[1, 2, 3])


def test_combined_reward_checks_what_rewards_return():
    @register_reward("_test_bad_reward")
    def bad(completions, examples):
        return [float("nan")] * len(completions)
    try:
        with pytest.raises(RewardError, match="_test_bad_reward"):
            CombinedReward(["_test_bad_reward"])(["a"], [_ex()])
    finally:
        del REWARDS["_test_bad_reward"]


def test_accuracy_reward_uses_example_gold_and_options():
    exs = [_ex(gold="42"), _ex(gold=r"\frac12"), {"gold": "7"}]
    comps = [r"r</think>\boxed{42}", r"r</think>\boxed{0.5}", "<answer>7</answer>"]
    assert accuracy_reward(comps, exs) == [1.0, 1.0, 0.0]
    assert accuracy_reward(comps, exs, started_in_reasoning=False) == [1.0, 1.0, 1.0]
    assert accuracy_reward(comps, exs, extract="answer_tag", started_in_reasoning=False) == [0.0, 0.0, 1.0]
    with pytest.raises(RewardError, match="math answer"):
        accuracy_reward(["x"], [_ex(gold={"tests": []})])


# ---------------------------------------------------------------------- shape rewards
@pytest.mark.parametrize("completion, style, ok", [
    ("<think>reason</think> <answer>42</answer>", "r1_zero", True),
    ("  <think>\nreason\n</think>\n<answer>\n42\n</answer>\n", "r1_zero", True),
    ("<think>reason</think> <answer>42</answer> trailing", "r1_zero", False),
    ("lead <think>reason</think> <answer>42</answer>", "r1_zero", False),
    ("<think> </think> <answer>42</answer>", "r1_zero", True),      # empty reasoning is well-formed
    ("<think>reason</think> <answer> </answer>", "r1_zero", False),
    ("<think>a</think><think>b</think> <answer>42</answer>", "r1_zero", False),
    ("<think>a <answer>1</answer></think> <answer>42</answer>", "r1_zero", False),
    ("<answer>42</answer><think>reason</think>", "r1_zero", False),
    ("reason</think>42", "r1_zero", False),
    ("reason\n</think>\n\nThe answer is \\boxed{42}.", "r1", True),
    ("<think>\nreason</think>42", "r1", True),
    ("reason", "r1", False),
    ("</think>42", "r1", True),
    ("reason</think>  ", "r1", False),
    ("reason</think>42</think>", "r1", False),
    ("reason <think> more</think>42", "r1", False),
])
def test_format(completion, style, ok):
    assert format_ok(completion, style) is ok
    assert REWARDS["format"]([completion], [_ex()], style=style) == [1.0 if ok else 0.0]


def test_format_can_require_reasoning():
    for completion, style in (("<think> </think> <answer>42</answer>", "r1_zero"), ("</think>42", "r1")):
        assert format_ok(completion, style) and not format_ok(completion, style, require_reasoning=True)
        assert REWARDS["format"]([completion], [_ex()], style=style, require_reasoning=True) == [0.0]


def test_format_unknown_style():
    with pytest.raises(RewardError, match="unknown format style"):
        REWARDS["format"](["x"], [_ex()], style="r2")


@pytest.mark.parametrize("completion, strict, score", [
    ("<think>a</think> <answer>b</answer>", False, 1.0),
    ("<think>a</think> no answer tags", False, 0.5),
    ("<think>a</think> <answer>b</answer> <answer>c</answer>", False, 0.5),
    ("nothing", False, 0.0),
    ("<think>\na\n</think>\n<answer>\nb\n</answer>", True, 1.0),
    ("<think>a</think> <answer>b</answer>", True, 0.0),
    ("<think>\na</think>\n<answer>\nb\n</answer>", True, 0.75),
])
def test_tag_count(completion, strict, score):
    assert tag_count_reward([completion], [_ex()], strict_newlines=strict) == [score]


def test_script_words_and_dominant_script():
    assert script_words("We have x = 2, so") == ["latin"] * 3          # "x" is a variable, neutral
    assert script_words(r"\frac{1}{2} 3.5 + 7 = π") == []               # LaTeX, numbers, symbols
    assert script_words("所以答案") == ["cjk"] * 4                        # one word per character
    assert script_words("Итак, ответ") == ["cyrillic"] * 2
    assert script_words("الجواب هو") == ["arabic"] * 2
    assert script_words("naïve café") == ["latin"] * 2
    assert dominant_script("计算 2+3 的值 please") == "cjk"
    assert dominant_script("2+3=?") is None


def test_language_consistency_known_values():
    zh = _ex(question="小明有5个苹果，又买了3个。他一共有几个苹果？")
    en = _ex(question="How many apples does he have?")
    comps = [
        "他有五个苹果</think>8",                          # all CJK
        "So 5 + 3 = 8 apples</think>8",                   # all Latin: 3 words ("So", "apples" ... )
        "先算 5+3 then check</think>8",                    # 2 CJK + 2 Latin words
        "5 + 3 = 8</think>8",                              # no words: nothing inconsistent
        "</think>8",                                       # empty reasoning
    ]
    assert language_consistency_reward(comps, [zh] * 5) == [1.0, 0.0, 0.5, 1.0, 0.0]
    assert language_consistency_reward(comps, [en] * 5) == [0.0, 1.0, 0.5, 1.0, 0.0]
    assert language_consistency_reward(comps[:1], [en], language="cjk") == [1.0]
    assert language_consistency_reward(["Итак ответ восемь, ok</think>8"], [en]) == [0.25]
    assert language_consistency_reward(["eight</think>8"], [_ex(question="5+3=?")]) == [1.0]   # default latin
    with pytest.raises(RewardError, match="unknown language"):
        language_consistency_reward(comps, [en] * 5, language="klingon")


def test_overlong_known_values():
    lengths = (0, 80, 85, 90, 99, 100, 150)
    assert [overlong_penalty(n, 100, 20) for n in lengths] == [0.0, 0.0, -0.25, -0.5, -0.95, -1.0, -1.0]
    assert overlong_reward(["a", "b"], [_ex(), _ex()], max_len=100, cache=20, num_tokens=[80, 90]) == [0.0, -0.5]
    assert overlong_reward(["a"], [_ex(num_tokens=95)], max_len=100, cache=20) == [-0.75]
    assert overlong_reward(["a"], [_ex()], max_len=100, num_tokens=[100]) == [-1.0]      # cache defaults to 25
    assert overlong_reward(["a"], [_ex()], max_len=100, num_tokens=[80]) == [-0.2]
    with pytest.raises(RewardError, match="num_tokens"):
        overlong_reward(["a"], [_ex()], max_len=100)
    with pytest.raises(RewardError, match="max_len"):
        overlong_reward(["a"], [_ex()], num_tokens=[1])
    with pytest.raises(RewardError, match="cache"):
        overlong_reward(["a"], [_ex()], max_len=10, cache=11, num_tokens=[1])

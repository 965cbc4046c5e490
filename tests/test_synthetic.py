"""Synthetic tasks (arithmetic with worked solutions, countdown) and the countdown reward.

Every worked solution is checked line by line: each step is a true equation on the right
digits with the right carry, each section's value is right, and the last value is gold.
"""

import itertools
import operator
import re
import statistics
import time

import pytest

from r1lab.rewards import REWARDS
from r1lab.rewards.countdown import answer_expression, check_expression, countdown_reward
from r1lab.tasks import TASKS, Example, TaskError
from r1lab.tasks.synthetic import (
    ArithmeticTask, CountdownTask, answer_part, document, format_completion, pretrain_corpus, worked_solution,
)
from r1lab.tokenizer import load_tokenizer, r1_zero_prompt, render_chat


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


# ------------------------------------------------------------------ a checker of worked solutions
_SECTION = re.compile(r"(\d+)([+\-*])(\d+): (.+) =(\d+)")
_ADD = re.compile(r"(\d)\+(\d)\+(\d)=(\d\d)")
_SUB = re.compile(r"(\d+)-(\d)-(\d)=(\d)")
_MUL = re.compile(r"(\d)\*(\d)\+(\d)=(\d\d)")


_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _value(question):
    a, op, b = re.fullmatch(r"(\d+)([+\-*])(\d+)", question).groups()
    return _APPLY[op](int(a), int(b))


def _lsb(n):
    return [int(c) for c in reversed(str(n))]


def check_section(line):
    """Verify one ``x op y: steps =v`` line step by step; return (x, op, y, v)."""
    m = _SECTION.fullmatch(line)
    assert m, line
    x, op, y, steps, v = int(m[1]), m[2], int(m[3]), m[4].split(" "), int(m[5])
    dx, dy = _lsb(x), _lsb(y)
    carry = 0
    if op == "+":
        assert len(steps) == max(len(dx), len(dy)), line
        for i, s in enumerate(steps):
            a, b, c, r = map(int, _ADD.fullmatch(s).groups())
            assert (a, b, c) == (dx[i] if i < len(dx) else 0, dy[i] if i < len(dy) else 0, carry), line
            assert r == a + b + c, line
            carry = r // 10
        assert v == x + y
    elif op == "-":
        assert x >= y and len(steps) == len(dx), line
        for i, s in enumerate(steps):
            a, b, c, r = map(int, _SUB.fullmatch(s).groups())
            borrowed = a >= 10
            assert (a - 10 * borrowed, b, c) == (dx[i], dy[i] if i < len(dy) else 0, carry), line
            assert r == a - b - c and (a - 10 - b - c < 0 if borrowed else True), line
            carry = int(borrowed)
        assert carry == 0 and v == x - y
    else:
        assert y < 10 and len(steps) == len(dx), line
        for i, s in enumerate(steps):
            a, m_, c, r = map(int, _MUL.fullmatch(s).groups())
            assert (a, m_, c) == (dx[i], y, carry), line
            assert r == a * m_ + c, line
            carry = r // 10
        assert v == x * y
    # the value is the steps' digits read back from the last step (its carry first), no leading zeros
    results = [s.split("=")[1] for s in steps]
    digits = [r[-1] for r in reversed(results)]
    if op != "-":
        digits.insert(0, results[-1][0])
    assert str(v) == ("".join(digits).lstrip("0") or "0"), line
    return x, op, y, v


def check_solution(question, solution, gold):
    a, op, b = re.fullmatch(r"(\d+)([+\-*])(\d+)", question).groups()
    a, b = int(a), int(b)
    lines = solution.split("\n")
    if op == "-" and a < b:
        assert lines[0] == f"{a}-{b}=-({b}-{a})" and lines[-1] == f"={a - b}"
        assert check_section(lines[1]) == (b, "-", a, b - a) and len(lines) == 3
        value = a - b
    elif op in "+-":
        assert len(lines) == 1
        assert check_section(lines[0])[:3] == (a, op, b)
        value = check_section(lines[0])[3]
    else:
        acc = None
        it = iter(lines)
        for k, m in enumerate(_lsb(b)):
            assert check_section(next(it)) == (a, "*", m, a * m)
            if acc is None:
                acc = a * m
            else:
                assert check_section(next(it)) == (acc, "+", a * m * 10 ** k, acc + a * m * 10 ** k)
                acc += a * m * 10 ** k
        assert next(it, None) is None
        value = acc
    assert str(value) == gold
    assert solution.rsplit("=", 1)[1] == gold          # the solution ends in the answer
    return True


# ------------------------------------------------------------------ arithmetic: generation
def test_registered():
    assert TASKS["arithmetic"] is ArithmeticTask and TASKS["countdown"] is CountdownTask
    assert REWARDS["countdown"] is countdown_reward


def test_examples_in_the_docstring_are_what_the_generator_writes():
    assert worked_solution(4567, "+", 891)[0] == "4567+891: 7+1+0=08 6+9+0=15 5+8+1=14 4+0+1=05 =5458"
    assert worked_solution(4567, "-", 891)[0] == "4567-891: 7-1-0=6 16-9-0=7 15-8-1=6 4-0-1=3 =3676"
    assert worked_solution(1234, "*", 56) == (
        "1234*6: 4*6+0=24 3*6+2=20 2*6+2=14 1*6+1=07 =7404\n"
        "1234*5: 4*5+0=20 3*5+2=17 2*5+1=11 1*5+1=06 =6170\n"
        "7404+61700: 4+0+0=04 0+0+0=00 4+7+0=11 7+1+1=09 0+6+0=06 =69104", 13)
    assert worked_solution(1000, "-", 999)[0] == "1000-999: 10-9-0=1 10-9-1=0 10-9-1=0 1-0-1=0 =1"
    assert worked_solution(8, "-", 12)[0] == "8-12=-(12-8)\n12-8: 12-8-0=4 1-0-1=0 =4\n=-4"


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = [(e.id, e.question, e.gold, e.meta) for e in ArithmeticTask(seed=3).load("train", 300)]
    b = [(e.id, e.question, e.gold, e.meta) for e in ArithmeticTask(seed=3).load("train", 300)]
    c = [e.question for e in ArithmeticTask(seed=4).load("train", 300)]
    assert a == b
    assert [q for _, q, _, _ in a] != c
    assert ArithmeticTask(seed=3).load("test", 50) == ArithmeticTask(seed=3).load("test", 50)


def test_train_and_test_are_disjoint_across_seeds_and_knobs():
    train = set()
    for seed, digits in ((0, (1, 3)), (1, (1, 3)), (2, (2, 2))):
        train |= {e.question for e in ArithmeticTask(seed=seed, digits=digits, size=3000).examples("train")}
    test = set()
    for seed in (0, 5):
        test |= {e.question for e in ArithmeticTask(seed=seed, digits=(1, 3), test_size=1000).examples("test")}
    assert len(train) > 5000 and len(test) > 1000
    assert not train & test


def test_sizes_and_endless_streams():
    t = ArithmeticTask(size=37, test_size=11)
    assert len(list(t.examples("train"))) == 37 and len(list(t.examples("test"))) == 11
    assert len(t.load()) == 11                            # the default split is test
    endless = ArithmeticTask(size=None).examples("train")
    assert len(list(itertools.islice(endless, 20_500))) == 20_500
    ids = [e.id for e in t.examples("train")]
    assert len(set(ids)) == 37 and ids[0] == "arithmetic/train/0"


def test_sized_split_has_no_repeats_while_the_space_allows():
    qs = [e.question for e in ArithmeticTask(ops="+", digits=2, size=2000).examples("train")]
    assert len(set(qs)) == 2000
    tiny = [e.question for e in ArithmeticTask(ops="+", digits=1, size=200).examples("train")]
    assert len(tiny) == 200 and len(set(tiny)) < 100       # only ~95 one-digit sums exist: repeats, no hang


@pytest.mark.parametrize("knobs", [
    dict(ops="+", digits=(1, 4)),
    dict(ops="-", digits=(2, 5)),
    dict(ops="*", digits=(1, 4), mul_digits=(1, 2)),
    dict(ops="×", digits=3, mul_digits=2),
    dict(ops=["+", "*"], digits=(3, 6), mul_digits=1),
])
def test_difficulty_knobs_are_honoured(knobs):
    t = ArithmeticTask(**knobs)
    ops = "".join(knobs["ops"]).replace("×", "*")
    lo, hi = (knobs["digits"],) * 2 if isinstance(knobs["digits"], int) else knobs["digits"]
    md = knobs.get("mul_digits", (1, 2))
    mlo, mhi = (md, md) if isinstance(md, int) else md
    seen_a, seen_b = set(), set()
    for e in t.load("train", 1500):
        a, op, b = re.fullmatch(r"(\d+)([+\-*])(\d+)", e.question).groups()
        assert op in ops and e.meta["op"] == {"+": "add", "-": "sub", "*": "mul"}[op]
        assert lo <= len(a) <= hi and (mlo <= len(b) <= mhi if op == "*" else lo <= len(b) <= hi)
        assert e.meta["digits"] == [len(a), len(b)] and e.meta["shape"] == f"{len(a)}{op}{len(b)}"
        assert int(e.gold) >= 0                                  # negative results are off by default
        seen_a.add(len(a))
        seen_b.add(len(b))
    assert seen_a == set(range(lo, hi + 1))                      # every digit count actually occurs
    if ops == "*":
        assert seen_b == set(range(mlo, mhi + 1))


def test_every_worked_solution_is_correct_step_by_step():
    n = 0
    for knobs in (dict(ops="+-*", digits=(1, 4)), dict(ops="+-", digits=(1, 9), negative=True),
                  dict(ops="*", digits=(1, 6), mul_digits=(1, 3))):
        for split, size in (("train", 2500), ("test", 300)):
            for e in ArithmeticTask(**knobs, size=size, test_size=size).examples(split):
                check_solution(e.question, e.meta["solution"], e.gold)
                assert int(e.gold) == _value(e.question)
                n += 1
    assert n > 8000
    # edge cases: zeros, multiplier digits 0, the longest carries
    for a, op, b in [(0, "+", 0), (9999, "+", 1), (0, "*", 7), (999, "*", 99), (1234, "*", 10), (5, "*", 0),
                     (10000, "-", 1), (7, "-", 7), (0, "-", 0), (3, "-", 12345), (99999, "*", 909)]:
        sol, _ = worked_solution(a, op, b)
        check_solution(f"{a}{op}{b}", sol, str(_value(f"{a}{op}{b}")))


def test_negative_subtraction_when_enabled():
    exs = ArithmeticTask(ops="-", digits=(1, 4), negative=True).load("train", 500)
    assert any(int(e.gold) < 0 for e in exs) and any(int(e.gold) > 0 for e in exs)


def test_solution_length_grows_with_digits(tok):
    def mean_tokens(**knobs):
        exs = ArithmeticTask(**knobs).load("train", 150)
        return statistics.mean(len(tok.encode(e.meta["solution"])) for e in exs)

    for op in "+-":
        lengths = [mean_tokens(ops=op, digits=d) for d in range(1, 7)]
        assert lengths == sorted(lengths) and lengths[-1] > 3 * lengths[0], (op, lengths)
    for md in (1, 2):
        lengths = [mean_tokens(ops="*", digits=d, mul_digits=md) for d in range(1, 6)]
        assert lengths == sorted(lengths), lengths
    assert mean_tokens(ops="*", digits=3, mul_digits=2) > 2 * mean_tokens(ops="*", digits=3, mul_digits=1)
    diffs = [statistics.mean(e.meta["difficulty"] for e in ArithmeticTask(ops="*", digits=d).load("train", 100))
             for d in range(1, 6)]
    assert diffs == sorted(diffs)


def test_direct_answers_are_short_and_worked_ones_much_longer(tok):
    for e in ArithmeticTask(digits=(1, 4)).load("train", 300):
        direct = len(tok.encode(" " + format_completion(e, worked=False)))
        worked = len(tok.encode(" " + format_completion(e, worked=True)))
        assert direct <= 9 + len(e.gold) and worked >= direct + 12


# ------------------------------------------------------------------ arithmetic: text forms
def test_completion_prompt_and_document_forms(tok):
    t = ArithmeticTask()
    e = Example("x", "1234*56", "69104", {"solution": worked_solution(1234, "*", 56)[0]})
    assert format_completion(e, worked=False) == "<think> </think> <answer> 69104 </answer>"
    w = format_completion(e, worked=True)
    assert w.startswith("<think> 1234*6: 4*6+0=24") and w.endswith("=69104 </think> <answer> 69104 </answer>")
    assert format_completion(e, False, "chat") == "\n</think>\n\n69104"
    assert format_completion(e, True, "chat").endswith("=69104\n</think>\n\n69104")
    assert t.prompt(e) == r1_zero_prompt("1234*56") == t.prompt(e, "r1_zero")
    assert t.prompt(e, "chat") == [{"role": "user", "content": "1234*56"}] and t.prompt(e, "plain") == "1234*56"
    doc = document(e, True)
    assert doc == r1_zero_prompt("1234*56") + " " + w
    assert tok.encode(doc) == tok.encode(r1_zero_prompt("1234*56")) + tok.encode(" " + w)
    assert document(e, False, "chat") == render_chat([{"role": "user", "content": "1234*56"}],
                                                     add_generation_prompt=True) + "\n</think>\n\n69104"
    assert document(e, False, "plain") == "1234*56 <think> </think> <answer> 69104 </answer>"
    # the task's own completions score 1.0 in every style
    for style in ("r1_zero", "chat", "plain"):
        assert t.score([format_completion(e, True, style), format_completion(e, False, style)], [e, e]) == [1.0, 1.0]
    with pytest.raises(TaskError, match="prompt style"):
        t.prompt(e, "fancy")


def test_pretrain_corpus():
    docs = list(pretrain_corpus(2000, worked_fraction=0.25, seed=1, digits=(1, 3)))
    assert len(docs) == 2000 and docs == list(pretrain_corpus(2000, worked_fraction=0.25, seed=1, digits=(1, 3)))
    assert all(d.startswith(r1_zero_prompt("")[:40]) and d.endswith(" </answer>") for d in docs)
    completions = [d.split(" Assistant: ", 1)[1] for d in docs]
    worked = sum(not c.startswith("<think> </think>") for c in completions)
    assert 0.2 < worked / len(docs) < 0.3
    questions = [re.search(r"User: (.+?)\. Assistant:", d)[1] for d in docs]
    test = {e.question for e in ArithmeticTask(digits=(1, 3), test_size=2000).examples("test")}
    assert not set(questions) & test
    direct = lambda d: d.split(" Assistant: ", 1)[1].startswith("<think> </think>")   # noqa: E731
    assert all(direct(d) for d in pretrain_corpus(50, worked_fraction=0.0))
    assert not any(direct(d) for d in pretrain_corpus(50, worked_fraction=1.0))
    assert len(list(itertools.islice(ArithmeticTask().pretrain_corpus(None), 30))) == 30
    with pytest.raises(TaskError, match="worked_fraction"):
        next(pretrain_corpus(5, worked_fraction=1.5))


# ------------------------------------------------------------------ arithmetic: score
GOLD = Example("g", "6*7", "42", {})


@pytest.mark.parametrize("completion, expected", [
    ("<think> 6*7: 6*7+0=42 =42 </think> <answer> 42 </answer>", 1.0),
    ("<think> </think> <answer>42</answer>", 1.0),
    ("<think> </think> <answer> 0042 </answer>", 1.0),               # the same integer
    ("<think> </think> <answer> \\boxed{42} </answer>", 1.0),
    ("<think> x </think> The answer is \\boxed{42}.", 1.0),
    ("<think> x </think> 42", 1.0),                                  # a bare integer as the answer part
    ("reasoning\n</think>\n\n42", 1.0),                              # chat style: the prompt opened <think>
    ("<answer> 42 </answer>", 1.0),                                  # no think block at all
    ("42", 1.0),
    ("<think> </think> <answer> 43 </answer>", 0.0),
    ("<think> </think> <answer> -42 </answer>", 0.0),
    ("<think> </think> <answer> 42.0 </answer>", 0.0),
    ("<think> </think> <answer> 4 2 </answer>", 0.0),
    ("<think> </think> <answer> forty-two </answer>", 0.0),
    ("<think> =42 </think>", 0.0),                                   # answer only in the think part
    ("<think> =42 </think> <answer> </answer>", 0.0),
    ("<think> 6*7: 6*7+0=42 =42", 0.0),                              # truncated: never closed
    ("<think> </think> the answer is 42", 0.0),                      # missing tags, not a bare integer
    ("The answer is 42", 0.0),
    ("<think> </think> <answer> 42 </answer> <answer> 41 </answer>", 0.0),   # the last answer counts
    ("<think> </think> <answer> " + "4" * 5000 + " </answer>", 0.0),
    ("", 0.0),
])
def test_arithmetic_score(completion, expected):
    assert ArithmeticTask().score([completion], [GOLD]) == [expected]


def test_answer_key_and_negative_gold():
    t = ArithmeticTask()
    assert t.answer_key("<think> </think> <answer> 007 </answer>", GOLD) == "7"
    assert t.answer_key("<think> </think> <answer> −12 </answer>", GOLD) == "-12"
    assert t.answer_key("<think> </think> nothing", GOLD) is None
    neg = Example("n", "8-12", "-4", {})
    assert t.score(["<think> </think> <answer> -4 </answer>", "<answer> 4 </answer>"], [neg, neg]) == [1.0, 0.0]
    assert answer_part("  <think> a </think> b ") == "b" and answer_part(" b ") == "b"
    assert answer_part("a </think> b", started_in_reasoning=False) == "a </think> b"
    assert answer_part("b", started_in_reasoning=True) == ""


def test_scoring_is_fast():
    exs = ArithmeticTask().load("train", 2000)
    comps = [format_completion(e, worked=True) for e in exs]
    t0 = time.perf_counter()
    assert ArithmeticTask().score(comps, exs) == [1.0] * 2000
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("knobs, message", [
    (dict(ops="/"), "unknown operation"),
    (dict(ops=""), "ops"),
    (dict(digits=0), "digits"),
    (dict(digits=(3, 2)), "digits"),
    (dict(digits=(1, 99)), "digits"),
    (dict(mul_digits=(1, 9)), "mul_digits"),
    (dict(digits="3"), "digits"),
    (dict(size=-1), "size"),
    (dict(test_fraction=1.5), "test_fraction"),
    (dict(seed="a"), "seed"),
    (dict(negative="yes"), "negative"),
])
def test_bad_knobs_are_one_line_errors(knobs, message):
    with pytest.raises(TaskError, match=message) as e:
        ArithmeticTask(**knobs)
    assert "\n" not in str(e.value)


def test_unknown_split_and_unknown_option():
    with pytest.raises(TaskError, match="splits"):
        ArithmeticTask().load("validation", 1)
    with pytest.raises(TypeError):
        ArithmeticTask(digitz=3)


# ------------------------------------------------------------------ countdown: generation
def _numbers_used(expression):
    return sorted(int(n) for n in re.findall(r"\d+", expression))


def test_countdown_always_solvable_and_its_solution_scores_one():
    task = CountdownTask(size=2000)
    exs = list(task.examples("train")) + task.load("test", 300)
    for e in exs:
        g = e.gold
        assert set(g) == {"numbers", "target"} and 3 <= len(g["numbers"]) <= 4
        assert e.meta["difficulty"] == len(g["numbers"])
        assert all(1 <= n <= 99 for n in g["numbers"]) and 1 <= g["target"] <= 100
        assert _numbers_used(e.meta["expression"]) == sorted(g["numbers"])
        assert f"{g['numbers']}" in e.question and f"equals {g['target']}." in e.question
        assert e.meta["solution"].rsplit("=", 1)[1] == str(g["target"])
    comps = [format_completion(e, worked=True) for e in exs]
    assert countdown_reward(comps, exs) == [1.0] * len(exs)
    assert task.score(comps, exs) == [1.0] * len(exs)
    assert task.score([format_completion(e, worked=False) for e in exs[:50]], exs[:50]) == [1.0] * 50


def test_countdown_deterministic_disjoint_and_knobs(monkeypatch):
    a = CountdownTask(seed=7).load("train", 200)
    assert a == CountdownTask(seed=7).load("train", 200) and a != CountdownTask(seed=8).load("train", 200)
    key = lambda e: (tuple(sorted(e.gold["numbers"])), e.gold["target"])   # noqa: E731
    train = {key(e) for s in (0, 1) for e in CountdownTask(seed=s, size=2000).examples("train")}
    test = {key(e) for e in CountdownTask(test_size=500).examples("test")}
    assert len(test) == 500 and not train & test
    small = CountdownTask(n_numbers=3, number_range=(1, 9), target_range=(10, 30)).load("train", 300)
    assert all(len(e.gold["numbers"]) == 3 and max(e.gold["numbers"]) <= 9 and 10 <= e.gold["target"] <= 30
               for e in small)
    assert {len(e.gold["numbers"]) for e in CountdownTask(n_numbers=(2, 5)).load("train", 300)} == {2, 3, 4, 5}
    monkeypatch.setattr("r1lab.tasks.synthetic.MAX_SAMPLING_ATTEMPTS", 2000)
    with pytest.raises(TaskError, match="no train example"):
        CountdownTask(n_numbers=2, number_range=(1, 2), target_range=(10 ** 8, 10 ** 9)).load("train", 1)
    assert CountdownTask().prompt(a[0]) == r1_zero_prompt(a[0].question)


# ------------------------------------------------------------------ countdown reward
CD = Example("c", "q", {"numbers": [3, 5, 7], "target": 22}, {})


def _r(answer, example=CD, **options):
    return countdown_reward([f"<think> x </think> <answer> {answer} </answer>"], [example], **options)[0]


@pytest.mark.parametrize("answer, expected", [
    ("3*5+7", 1.0),
    ("7 + 3 * 5", 1.0),
    ("(7+3)*5 - 28 + 28", 0.0),                 # numbers not given
    ("((3*5)+7)", 1.0),
    ("3*5+7 = 22", 1.0),                        # a trailing "= N" is dropped
    ("3 × 5 + 7", 1.0),
    ("3*5+7 = 23", 1.0),                        # the left side is judged
    ("3+5+7", 0.1),                             # well formed, wrong value
    ("(3+5)/7", 0.1),
    ("3*5", 0.0),                               # a number unused
    ("3*5+7+7", 0.0),                           # a number used twice
    ("3*5+7+1", 0.0),                           # a number not given
    ("3*5+8-1", 0.0),
    ("15+7", 0.0),
    ("3.0*5+7", 0.0),
    ("-3+5*7-10", 0.0),                         # unary minus, and 10 is not given
    ("7/(5-5)+3", 0.0),                         # not the numbers either
    ("3**5+7", 0.0),
    ("3//5+7", 0.0),
    ("__import__('os').system('true')", 0.0),
    ("(lambda: 22)()", 0.0),
    ("3*5+7; 1", 0.0),
    ("", 0.0),
    ("3 5 7", 0.0),
    ("1_5+7", 0.0),
])
def test_countdown_reward_cases(answer, expected):
    assert _r(answer) == expected


def test_countdown_division_by_zero_fractions_and_repeated_numbers():
    ex = Example("d", "q", {"numbers": [4, 4, 6], "target": 0}, {})
    assert _r("6/(4-4)", ex) == 0.0                              # division by zero: not valid
    assert _r("(4-4)*6", ex) == 1.0                              # a number given twice may be used twice
    assert _r("(4-4)/6", ex) == 1.0
    frac = Example("f", "q", {"numbers": [1, 3, 9], "target": 27}, {})
    assert _r("9/(1/3)", frac) == 1.0                            # exact rational arithmetic
    assert _r("9/1/3", frac) == 0.1
    assert _r("3+5+7", format_score=0.0) == 0.0


def test_countdown_reward_is_safe_and_quick_on_hostile_input():
    t0 = time.perf_counter()
    assert _r("9**9**9") == 0.0
    assert _r("3*5+7" + "+0" * 50_000) == 0.0
    assert countdown_reward(["<answer>" + "(" * 100_000 + "</answer>"], [CD]) == [0.0]
    assert countdown_reward(["x" * 100_000], [CD]) == [0.0]
    assert countdown_reward(["<think>" + "3*5+7" * 20_000 + "</think><answer>3*5+7</answer>"], [CD]) == [1.0]
    assert _r("(" * 130 + "3*5+7" + ")" * 130) == 0.0                 # over the length bound
    assert _r("(" * 50 + "3*5+7" + ")" * 50) == 1.0
    assert time.perf_counter() - t0 < 0.5


def test_countdown_answer_forms():
    assert countdown_reward(["3*5+7"], [CD]) == [1.0]                    # bare answer part, no tags
    assert countdown_reward(["steps </think> <answer>3*5+7</answer>"], [CD]) == [1.0]
    assert countdown_reward(["<think> 3*5+7 </think>"], [CD]) == [0.0]  # only in the think part
    assert countdown_reward(["<think> unfinished 3*5+7"], [CD]) == [0.0]
    assert answer_expression("<answer> 3*5+7 = 22 </answer>") == "3*5+7"
    assert countdown_reward(["<answer>3*5+7</answer>"], [CD], started_in_reasoning=True) == [0.0]
    assert countdown_reward(["<answer>3*5+7</answer>"], [CD], started_in_reasoning=False) == [1.0]
    assert countdown_reward(["x </think> 3*5+7"], [CD], started_in_reasoning=False) == [0.0]
    assert countdown_reward(["x </think> 3*5+7"], [CD], started_in_reasoning=True) == [1.0]
    from r1lab.rewards import CombinedReward
    assert CombinedReward({"countdown": 1.0})(["<answer>3+5+7</answer>"], [CD])[0] == [0.1]
    assert check_expression("3*5+7", [7, 5, 3], 22) == 1.0 and check_expression(None, [3], 3) == 0.0
    assert CountdownTask().answer_key("<answer> 3 * 5 + 7 </answer>", CD) == "3*5+7"
    assert CountdownTask().score(["<answer>3+5+7</answer>"], [CD]) == [0.0]   # score is correctness only
    as_dict = {"gold": '{"numbers": [3, 5, 7], "target": 22}'}
    assert countdown_reward(["<answer>3*5+7</answer>"], [as_dict]) == [1.0]
    from r1lab.rewards import RewardError
    with pytest.raises(RewardError, match="countdown gold"):
        countdown_reward(["1"], [Example("b", "q", "22", {})])
    with pytest.raises(RewardError, match="format_score"):
        countdown_reward(["1"], [CD], format_score=2)
    with pytest.raises(RewardError, match="completions"):
        countdown_reward(["1", "2"], [CD])

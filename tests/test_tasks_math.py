"""Math tasks (r1lab/tasks/math.py): the packaged benchmarks, gold rules, prompts, scoring
and the generic JSONL task.

The end-to-end check: for every problem of AIME 2024 and AMC 2023 and the first 100 of
MATH-500 and GSM8K, a completion that boxes the canonical gold after ``</think>`` scores 1,
through the task's own extraction — and math-verify itself (fast path off) accepts each gold.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from r1lab.reasoning import last_boxed
from r1lab.rewards.math import final_answer, get_verifier
from r1lab.tasks import TASKS, Example, TaskError, get_task
from r1lab.tasks.math import PACKAGE_BENCHMARKS, MathTask
from r1lab.tokenizer import MATH_SUFFIX, r1_zero_prompt

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"
COUNTS = {"gsm8k": 1319, "math500": 500, "aime24": 30, "amc23": 40}
FILES = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500.jsonl", "aime24": "aime24.jsonl", "amc23": "amc23.jsonl"}


@pytest.fixture(scope="module")
def loaded():
    return {name: get_task(name).load() for name in COUNTS}


def _boxed_completion(gold: str) -> str:
    return f"Let me solve this step by step.\n...\n</think>\n\nThe final answer is $\\boxed{{{gold}}}$."


# ---------------------------------------------------------------------- packaged data
def test_registered():
    for name in (*COUNTS, "jsonl"):
        assert name in TASKS


@pytest.mark.parametrize("name", COUNTS)
def test_benchmarks_load_from_the_package(loaded, name):
    task = get_task(name)
    assert task.file("test") == PACKAGE_BENCHMARKS / FILES[name]
    assert task.file().is_relative_to(Path(__import__("r1lab").__file__).parent)
    exs = loaded[name]
    assert len(exs) == COUNTS[name]
    assert len({e.id for e in exs}) == len(exs)
    assert all(isinstance(e.gold, str) and e.gold and e.question.strip() for e in exs)
    assert exs[0].id == f"{name}/test/0" and exs[0].meta["line"] == 1


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared data folder")
@pytest.mark.parametrize("name", COUNTS)
def test_packaged_copies_are_unchanged(name):
    assert filecmp.cmp(PACKAGE_BENCHMARKS / FILES[name], SHARED / FILES[name], shallow=False)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared data folder")
def test_packaged_gsm8k_train_is_unchanged():
    assert filecmp.cmp(PACKAGE_BENCHMARKS / "gsm8k_train.jsonl", SHARED / "gsm8k_train.jsonl", shallow=False)


def test_packaged_readme_says_where_the_files_came_from():
    text = (PACKAGE_BENCHMARKS / "README.md").read_text(encoding="utf-8")
    assert "../shared/data/benchmarks/" in text.splitlines()[0]


def test_gold_spot_checks(loaded):
    gsm, m500, aime, amc = (loaded[n] for n in ("gsm8k", "math500", "aime24", "amc23"))
    assert gsm[0].gold == "18"
    assert gsm[0].question.startswith("Janet")
    assert "<<16-3-4=9>>" in gsm[0].meta["solution"]
    assert all("," not in e.gold and "####" not in e.gold for e in gsm)
    assert m500[0].gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert m500[0].meta["solution"].startswith("We have that")
    assert aime[0].gold == "204" and aime[7].gold == "025" and aime[0].meta["source_id"] == 60
    assert amc[0].gold == "27.0" and amc[15].gold == "-1.0"


def test_gsm8k_commas_are_removed():
    raw = [json.loads(line) for line in open(PACKAGE_BENCHMARKS / "gsm8k_test.jsonl", encoding="utf-8")]
    with_comma = [i for i, r in enumerate(raw) if "," in r["answer"].rsplit("####", 1)[1]]
    assert with_comma
    exs = get_task("gsm8k").load()
    for i in with_comma:
        assert exs[i].gold == raw[i]["answer"].rsplit("####", 1)[1].strip().replace(",", "")


def test_math500_gold_is_the_last_box_with_nested_braces(loaded):
    raw = [json.loads(line) for line in open(PACKAGE_BENCHMARKS / "math500.jsonl", encoding="utf-8")]
    assert [e.gold for e in loaded["math500"]] == [last_boxed(r["answer"]) for r in raw]
    assert any("{" in e.gold for e in loaded["math500"])


# ---------------------------------------------------------------------- end to end
def test_boxed_gold_scores_one_everywhere(loaded):
    exs = loaded["aime24"] + loaded["amc23"] + loaded["math500"][:100] + loaded["gsm8k"][:100]
    completions = [_boxed_completion(e.gold) for e in exs]
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(exs):
        by_task.setdefault(e.id.split("/")[0], []).append(i)
    for name, idx in by_task.items():
        task = get_task(name)
        assert task.score([completions[i] for i in idx], [exs[i] for i in idx]) == [1.0] * len(idx), name
    # The task's extraction returns the gold exactly, and math-verify (no fast path) agrees
    # that every gold equals itself: each one parses.
    answers = [final_answer(c, "boxed") for c in completions]
    assert answers == [e.gold for e in exs]
    verifier = get_verifier()
    verifier.fast_path = False
    try:
        scores = verifier.verify_many(zip(answers, [e.gold for e in exs]))
    finally:
        verifier.fast_path = True
    failed = [(exs[i].id, exs[i].gold) for i, s in enumerate(scores) if s != 1.0]
    assert failed == []


def test_equivalent_forms_of_real_golds(loaded):
    amc, aime = loaded["amc23"], loaded["aime24"]
    task = get_task("amc23")
    assert task.score([_boxed_completion("27"), _boxed_completion("27.5")], [amc[0], amc[0]]) == [1.0, 0.0]
    assert get_task("aime24").score([_boxed_completion("25")], [aime[7]]) == [1.0]          # gold "025"
    m = loaded["math500"][0]
    assert get_task("math500").score([_boxed_completion(r"(3,\frac{\pi}{2})"), _boxed_completion(r"(3, \pi)")],
                                     [m, m]) == [1.0, 0.0]


def test_answer_only_in_reasoning_scores_zero(loaded):
    ex = loaded["gsm8k"][0]
    task = get_task("gsm8k")
    assert task.score([r"I think \boxed{18}</think>not sure", r"\boxed{18}"], [ex, ex]) == [0.0, 0.0]


# ---------------------------------------------------------------------- prompts, styles, keys
def test_prompts(loaded):
    ex = loaded["aime24"][0]
    task = get_task("aime24")
    chat = task.prompt(ex, "chat")
    assert chat == [{"role": "user", "content": f"{ex.question}\n{MATH_SUFFIX}"}]
    assert task.prompt(ex) == chat                                       # the task's style
    assert task.prompt(ex, "r1_zero") == r1_zero_prompt(ex.question)
    assert task.prompt(ex, "plain") == ex.question
    assert get_task("aime24", style="r1_zero").prompt(ex) == r1_zero_prompt(ex.question)
    with pytest.raises(TaskError, match="unknown prompt style"):
        task.prompt(ex, "fancy")
    with pytest.raises(TaskError, match="unknown prompt style"):
        get_task("aime24", style="fancy")


def test_score_by_style():
    ex = Example(id="x", question="1+1?", gold="2")
    zero = "<think>1+1=2</think> <answer>2</answer>"
    r1 = "1+1=2</think>The answer is \\boxed{2}."
    chat_task = get_task("gsm8k")
    assert chat_task.style == "chat" and chat_task.answer_format == "boxed"
    assert chat_task.score([zero, r1], [ex, ex]) == [0.0, 1.0]           # chat: the box after </think>
    zero_task = get_task("gsm8k", style="r1_zero")
    assert zero_task.answer_format == "auto"
    assert zero_task.score([zero, r1, "<answer>2</answer>"], [ex] * 3) == [1.0, 1.0, 1.0]
    assert chat_task.score(["<answer>2</answer>"], [ex], style="r1_zero") == [1.0]
    assert get_task("gsm8k", extract="last_number").score(["x</think>so 2 apples"], [ex]) == [1.0]
    with pytest.raises(TaskError, match="extract mode"):
        get_task("gsm8k", extract="first")
    with pytest.raises(TaskError, match="2 completions for 1 examples"):
        chat_task.score([r1, r1], [ex])


def test_style_can_be_changed_on_a_copy():
    import copy

    task = copy.copy(get_task("gsm8k"))
    task.style = "r1_zero"                         # what the eval harness does
    assert task.answer_format == "auto"
    assert task.score(["<answer>2</answer>"], [Example(id="x", question="q", gold="2")]) == [1.0]
    assert get_task("gsm8k").answer_format == "boxed"


def test_same_answer_merges_equivalent_keys():
    task = get_task("math500")
    assert task.same_answer("27", "27")
    assert task.same_answer(r"\frac{1}{2}", "0.5")
    assert not task.same_answer("2", "3")


def test_answer_key(loaded):
    task = get_task("amc23")
    ex = loaded["amc23"][0]
    assert task.answer_key(_boxed_completion("27.0"), ex) == "27"
    assert task.answer_key(_boxed_completion("1,000"), ex) == "1000"
    assert task.answer_key(r"\boxed{27} never closed", ex) is None
    assert get_task("amc23", style="r1_zero").answer_key("<think>a</think><answer>27</answer>", ex) == "27"


# ---------------------------------------------------------------------- gsm8k train, path=
def test_gsm8k_train_split(tmp_path):
    task = get_task("gsm8k")
    assert task.splits == ("test", "train")
    exs = task.load("train")                        # shipped in the package: no ../shared needed
    assert len(exs) == 7473 and exs[0].id == "gsm8k/train/0"
    assert task.file("train") == PACKAGE_BENCHMARKS / "gsm8k_train.jsonl"
    assert exs[0].question.startswith("Natalia sold clips") and exs[0].gold == "72"
    test_questions = {e.question for e in task.load("test")}
    assert not test_questions & {e.question for e in exs}    # the splits are disjoint
    p = tmp_path / "mini.jsonl"
    p.write_text(json.dumps({"question": "q?", "answer": "work\n#### 1,234"}) + "\n", encoding="utf-8")
    assert [e.gold for e in get_task("gsm8k", path=p).load("train")] == ["1234"]
    assert [e.gold for e in get_task("gsm8k", path=str(p)).load()] == ["1234"]     # path= overrides test too
    with pytest.raises(TaskError, match="no split 'dev'"):
        task.load("dev")


def test_named_task_gold_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "no hashes"}) + "\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad.jsonl line 1: GSM8K answer has no '####'"):
        get_task("gsm8k", path=p).load()
    with pytest.raises(TaskError, match=r"line 1: reference solution has no \\boxed"):
        get_task("math500", path=p).load()


# ---------------------------------------------------------------------- generic JSONL
def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generic_jsonl_task(tmp_path):
    p = _write(tmp_path / "mine.jsonl", [
        {"question": "What is 1/2 as a decimal?", "answer": "0.5"},
        {"problem": "Area?", "solution": r"So it is $\boxed{\frac{\pi}{4}}$."},
        {"prompt": "How many?", "gold": 12},
        {"question": "Total?", "answer": "steps\n#### 1,500"},
        "",
        {"question": "Float?", "answer": 3.0, "id": "f"},
    ])
    task = get_task(str(p))
    assert isinstance(task, MathTask) and task.name == "mine"
    exs = task.load()
    assert [e.gold for e in exs] == ["0.5", r"\frac{\pi}{4}", "12", "1500", "3.0"]
    assert [e.meta["line"] for e in exs] == [1, 2, 3, 4, 6]
    assert exs[4].meta["source_id"] == "f"
    assert [e.gold for e in task.load("train")] == [e.gold for e in exs]
    assert task.score([_boxed_completion(r"\frac{1}{2}"), _boxed_completion(r"\frac{\pi}{4}"),
                       _boxed_completion("12"), _boxed_completion("1500"), _boxed_completion("3")], exs) == [1.0] * 5
    assert get_task("jsonl", path=p).load() == exs


def test_malformed_jsonl_names_the_line(tmp_path):
    p = _write(tmp_path / "broken.jsonl", [{"question": "a", "answer": "1"}, "", '{"question": "b", "answer": '])
    with pytest.raises(TaskError, match=r"broken.jsonl line 3: not valid JSON"):
        get_task(str(p)).load()


@pytest.mark.parametrize("row, message", [
    ({"answer": "1"}, r"line 2: missing field 'question' / 'problem' / 'prompt'"),
    ({"question": "q"}, r"line 2: missing field 'answer' / 'gold' / 'solution'"),
    ({"question": "q", "answer": None}, r"line 2: missing field 'answer'"),
    ({"question": "", "answer": "1"}, r"line 2: the question must be a non-empty string"),
    ({"question": "q", "answer": ""}, r"line 2: answer must be a non-empty"),
    ({"question": "q", "answer": [1]}, r"line 2: answer must be a non-empty"),
    ([1, 2], r"line 2: expected a JSON object"),
])
def test_missing_fields_name_line_and_field(tmp_path, row, message):
    p = _write(tmp_path / "rows.jsonl", [{"question": "ok", "answer": "1"}, row])
    with pytest.raises(TaskError, match=message):
        get_task(p.as_posix()).load()


def test_unknown_task_and_bad_options(tmp_path):
    with pytest.raises(TaskError, match=r"unknown task 'gsm9k'; known: .*gsm8k.*; or give a path to a \.jsonl file"):
        get_task("gsm9k")
    with pytest.raises(TaskError, match="no such task file"):
        get_task(str(tmp_path / "missing.jsonl"))
    with pytest.raises(TaskError, match=r"does not take option\(s\) 'seed'"):
        get_task("math500", seed=1)
    with pytest.raises(TaskError, match="needs path="):
        get_task("jsonl")

"""Chained addition (the demo's R1-Zero task): generation, worked solutions, splits, scoring,
pre-training documents, and the pre-training source that reads it."""

import re

import pytest

from r1lab.tasks import TASKS, TaskError, get_task
from r1lab.tasks.synthetic import (DEFAULT_TEST_FRACTION, ChainAddTask, _split_of, chain_pairs, chain_prefix,
                                   chain_rewrites, chain_solution, document, format_completion)
from r1lab.train.config import PretrainData, TrainError
from r1lab.train.data import DataError, SyntheticDocuments
from r1lab.tokenizer import load_tokenizer, r1_zero_prompt

_STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")


def check_solution(question: str, solution: str) -> int:
    """Each step adds the next term of the question to the previous step's value, correctly
    (modulo m when the question ends in ``mod m``); returns the final value."""
    chain, _, mod = question.partition(" mod ")
    mod = int(mod) if mod else None
    terms = [int(t) for t in chain.split("+")]
    steps = solution.split(" ")
    assert len(steps) == len(terms) - 1
    acc = terms[0]
    for step, term in zip(steps, terms[1:]):
        a, b, c = map(int, _STEP.fullmatch(step).groups())
        assert (a, b, c) == (acc, term, acc + term)
        acc = c % mod if mod else c
    return acc


def test_registered_and_docstring_example():
    assert TASKS["chain_add"] is ChainAddTask
    assert chain_solution([37, 85, 12, 64]) == "37+85=122 122+12=134 134+64=198"


def test_worked_solutions_are_right_and_grow_with_the_chain():
    t = ChainAddTask(terms=(2, 9), digits=(1, 3), size=3000)
    lengths = {}
    for ex in t.examples("train"):
        assert check_solution(ex.question, ex.meta["solution"]) == int(ex.gold) == sum(map(int, ex.question.split("+")))
        n = ex.meta["terms"]
        assert ex.meta["difficulty"] == n - 1 and 2 <= n <= 9
        assert all(1 <= len(x) <= 3 for x in ex.question.split("+"))
        lengths.setdefault(n, []).append(len(ex.meta["solution"]))
    assert set(lengths) == set(range(2, 10))
    means = [sum(v) / len(v) for _, v in sorted(lengths.items())]
    assert means == sorted(means)


def test_remainder_variant():
    assert chain_solution([8, 7, 4, 6, 8, 2], mod=10) == "8+7=15 5+4=9 9+6=15 5+8=13 3+2=5"
    t = ChainAddTask(terms=(2, 10), digits=1, mod=10, size=2000)
    seen = set()
    for ex in t.examples("train"):
        chain, _, mod = ex.question.partition(" mod ")
        assert mod == "10" and all(len(x) == 1 for x in chain.split("+"))
        assert check_solution(ex.question, ex.meta["solution"]) == int(ex.gold) == sum(map(int, chain.split("+"))) % 10
        seen.add(ex.meta["terms"])
    assert seen == set(range(2, 11))
    ex = t.load("test", 1)[0]
    assert t.score([format_completion(ex, True), format_completion(ex, False)], [ex, ex]) == [1.0, 1.0]
    wrong = str((int(ex.gold) + 1) % 10)
    assert t.score([f"<think> </think> <answer> {wrong} </answer>"], [ex]) == [0.0]


def check_rewrites(question: str, solution: str) -> int:
    """The first line is the question's chain; each next line is the one before with its
    first two numbers replaced by their sum (mod m); returns the last line's number."""
    chain, _, mod = question.partition(" mod ")
    mod = int(mod) if mod else None
    lines = [[int(x) for x in line.split("+")] for line in solution.split(" = ")]
    assert lines[0] == [int(x) for x in chain.split("+")] and len(lines[-1]) == 1
    for prev, cur in zip(lines, lines[1:]):
        head = prev[0] + prev[1]
        assert cur == [head % mod if mod else head] + prev[2:]
    return lines[-1][0]


def test_rewrite_solutions():
    assert chain_rewrites([8, 7, 4, 6], mod=10) == "8+7+4+6 = 5+4+6 = 9+6 = 5"
    assert chain_rewrites([37, 85, 12]) == "37+85+12 = 122+12 = 134"
    t = ChainAddTask(terms=(3, 9), digits=1, mod=10, solution="rewrite", size=1500)
    for ex in t.examples("train"):
        assert check_rewrites(ex.question, ex.meta["solution"]) == int(ex.gold)
    ex = t.load("test", 1)[0]
    assert t.score([format_completion(ex, True)], [ex]) == [1.0]
    with pytest.raises(TaskError, match="solution"):
        ChainAddTask(solution="magic")


def test_prefix_solutions_keep_inputs_at_fixed_token_distances():
    assert chain_prefix([3, 5, 1, 8], mod=10) == "3 8 9 7 so the answer is 7"
    assert chain_prefix([37, 85, 12]) == "37 122 134 so the answer is 134"
    tok = load_tokenizer()
    t = ChainAddTask(terms=7, digits=1, mod=10, solution="prefix", wording="last_digit", size=300)
    for ex in t.examples("train"):
        assert ex.question.startswith("last digit of ")
        terms = [int(x) for x in ex.question.removeprefix("last digit of ").split("+")]
        values, _, last = ex.meta["solution"].partition(" so the answer is ")
        assert [int(v) for v in values.split(" ")] == [sum(terms[:k + 1]) % 10 for k in range(7)]
        assert last == ex.gold == str(sum(terms) % 10)
    assert t.score([format_completion(ex, True)], [ex]) == [1.0]
    # every value sits the same number of tokens after its term (the design's point)
    pieces = [tok.decode([i]) for i in tok.encode(document(ex, True, "plain"))]
    think = pieces.index("<think>")
    term_pos = [i for i in range(think) if pieces[i].isdigit()][:7]
    value_pos = [i for i in range(think, len(pieces)) if pieces[i].isdigit()][:7]
    assert len({v - p for p, v in zip(term_pos, value_pos)}) == 1
    with pytest.raises(TaskError, match="last_digit"):
        ChainAddTask(wording="last_digit")             # needs mod 10
    with pytest.raises(TaskError, match="wording"):
        ChainAddTask(wording="shout")


def test_digit_sum_wording_writes_the_running_values_as_a_digit_string():
    """The demo's task: ``digit sum of 3102 mod 4`` → ``3312 so the answer is 2``; every
    value is predicted from the value just before it (one token back) and its term a fixed
    number of tokens back."""
    assert chain_prefix([3, 1, 0, 2], mod=4, sep="") == "3002 so the answer is 2"
    tok = load_tokenizer()
    t = ChainAddTask(terms=10, digits=1, mod=4, solution="prefix", wording="digit_sum", size=300)
    seen = set()
    for ex in t.examples("train"):
        chain = re.fullmatch(r"digit sum of ([0-3]{10}) mod 4", ex.question).group(1)
        terms = [int(c) for c in chain]
        seen |= set(terms)
        values, _, last = ex.meta["solution"].partition(" so the answer is ")
        assert values == "".join(str(sum(terms[:k + 1]) % 4) for k in range(10))
        assert last == ex.gold == str(sum(terms) % 4)
    assert seen == {0, 1, 2, 3}
    assert t.score([format_completion(ex, True), format_completion(ex, False)], [ex, ex]) == [1.0, 1.0]
    pieces = [tok.decode([i]) for i in tok.encode(document(ex, True, "plain"))]
    think = pieces.index("<think>")
    term_pos = [i for i in range(think) if pieces[i].isdigit()][:10]
    value_pos = [i for i in range(think, len(pieces)) if pieces[i].isdigit()][:10]
    assert value_pos == list(range(value_pos[0], value_pos[0] + 10))        # one token per value
    assert len({v - p for p, v in zip(term_pos, value_pos)}) == 1
    for bad in ({"mod": 12}, {"mod": None}, {"digits": 2}, {"solution": "running"}):
        with pytest.raises(TaskError, match="digit_sum"):
            ChainAddTask(**{"terms": 5, "digits": 1, "mod": 4, "solution": "prefix", "wording": "digit_sum", **bad})


def test_pairs_solutions_keep_every_term_at_one_distance():
    assert chain_pairs([3, 5, 1, 8], mod=10) == "33 58 19 87"
    tok = load_tokenizer()
    t = ChainAddTask(terms=10, digits=1, mod=10, solution="pairs", size=300)
    for ex in t.examples("train"):
        terms = [int(x) for x in ex.question.split(" mod ")[0].split(" + ")]
        pairs = ex.meta["solution"].split(" ")
        assert [int(p[0]) for p in pairs] == terms
        assert [int(p[1]) for p in pairs] == [sum(terms[:k + 1]) % 10 for k in range(10)]
        assert pairs[-1][1] == ex.gold
    pieces = [tok.decode([i]) for i in tok.encode(document(ex, True, "plain"))]
    think = pieces.index("<think>")
    term_pos = [i for i in range(think) if pieces[i].isdigit()][:10]
    copy_pos = [i for i in range(think, len(pieces)) if pieces[i].isdigit()][0:20:2]
    assert len({c - p for p, c in zip(term_pos, copy_pos)}) == 1
    with pytest.raises(TaskError, match="pairs"):
        ChainAddTask(digits=2, mod=10, solution="pairs")


def test_splits_disjoint_deterministic_and_sized():
    train = {e.question for e in ChainAddTask(size=4000).examples("train")}
    test = [e.question for e in ChainAddTask(test_size=300).examples("test")]
    assert not train & set(test) and len(set(test)) == 300
    assert ChainAddTask(seed=1).load("test", 20) == ChainAddTask(seed=1).load("test", 20)
    assert [e.question for e in ChainAddTask(seed=1).load("train", 20)] != \
        [e.question for e in ChainAddTask(seed=2).load("train", 20)]
    # the test split does not depend on the seed's training stream: it is the hash bucket
    assert {e.question for e in ChainAddTask(seed=5, test_size=200).examples("test")}.isdisjoint(train)


@pytest.mark.parametrize("completion, expected", [
    ("<think> 37+85=122 122+12=134 </think> <answer> 134 </answer>", 1.0),
    ("<think> </think> <answer> 134 </answer>", 1.0),
    ("<think> </think> <answer>0134</answer>", 1.0),
    ("<think> 37+85=122 122+12=134 </think> <answer> 133 </answer>", 0.0),
    ("<think> the answer is 134", 0.0),             # never closed: no answer
    ("134", 1.0),                                    # a bare integer is an answer
    ("<answer> 1 3 4 </answer>", 0.0),
    ("", 0.0),
])
def test_score(completion, expected):
    t = ChainAddTask()
    ex = next(e for e in t.examples("test"))
    ex = type(ex)(id=ex.id, question="37+85+12", gold="134", meta=ex.meta)
    assert t.score([completion], [ex]) == [expected]


def test_completions_and_documents(tmp_path):
    ex = ChainAddTask().load("test", 1)[0]
    worked = format_completion(ex, True)
    assert worked == f"<think> {ex.meta['solution']} </think> <answer> {ex.gold} </answer>"
    assert format_completion(ex, False) == f"<think> </think> <answer> {ex.gold} </answer>"
    assert document(ex, True) == f"{r1_zero_prompt(ex.question)} {worked}"
    t = ChainAddTask()
    assert t.score([worked, format_completion(ex, False)], [ex, ex]) == [1.0, 1.0]
    docs = list(t.pretrain_corpus(400, worked_fraction=0.3, seed=1))
    share = sum(not d.split("Assistant: ", 1)[1].startswith("<think> </think>") for d in docs) / len(docs)
    assert 0.22 < share < 0.38


def test_bad_options_are_one_line_errors():
    for bad in ({"terms": 1}, {"terms": (3, 2)}, {"terms": 99}, {"digits": 0}, {"digits": "2"}, {"mod": 1},
                {"mod": "10"}, {"mod": True}):
        with pytest.raises(TaskError) as e:
            get_task("chain_add", **bad)
        assert "\n" not in str(e.value)


def test_pretraining_source_reads_any_synthetic_task():
    tok = load_tokenizer()
    docs = SyntheticDocuments({"terms": [2, 4]}, 0.5, "r1_zero", seed=3, source="chain_add")
    first = [docs[i] for i in range(20)]
    again = SyntheticDocuments({"terms": [2, 4]}, 0.5, "r1_zero", seed=3, source="chain_add")
    assert first == [again[i] for i in range(20)]
    test_questions = {e.question for e in ChainAddTask(terms=(2, 4), test_size=2000).examples("test")}
    for d in first:
        q = re.search(r"User: ([0-9+]+)\. Assistant:", d).group(1)
        assert q not in test_questions                       # training documents: train questions only
    held = [re.search(r"User: ([0-9+]+)\.", d).group(1) for d, _ in zip(docs.heldout(), range(30))]
    assert all(_split_of("chain_add", q, DEFAULT_TEST_FRACTION) == "test" for q in held)
    assert all(_split_of("chain_add", q, DEFAULT_TEST_FRACTION) == "train" for q in
               (re.search(r"User: ([0-9+]+)\.", d).group(1) for d in first))
    assert all(tok.decode(tok.encode(d)) == d for d in first[:5])
    with pytest.raises(DataError, match="data.options.*terms"):
        SyntheticDocuments({"terms": 0}, 0.5, "r1_zero", seed=0, source="chain_add")
    with pytest.raises(TrainError, match="source"):
        PretrainData(source="chains")
    assert PretrainData(source="chain_add").source == "chain_add"


def test_unpacked_rows_hold_one_document_each():
    from r1lab.train.data import PAD, PaddedDocuments, split_rows

    tok = load_tokenizer()
    docs = SyntheticDocuments({"terms": 7, "digits": 1, "mod": 10, "solution": "prefix", "wording": "last_digit"},
                              0.5, "plain", seed=1, source="chain_add")
    rows = PaddedDocuments(docs, tok, 60).next_rows(6)
    assert rows.shape == (6, 61)
    for i, row in enumerate(rows.tolist()):
        real = [t for t in row if t != PAD]
        assert real == [tok.bos_token_id] + tok.encode(docs[i]) + [tok.eos_token_id]
        assert row[len(real):] == [PAD] * (61 - len(real))            # padding only after the EOS
    inputs, targets = split_rows(rows)
    assert int(inputs.min()) >= 0 and ((targets == -100) == (rows[:, 1:] == PAD)).all()
    assert (targets[rows[:, 1:] != PAD] == rows[:, 1:][rows[:, 1:] != PAD]).all()


@pytest.mark.parametrize("extra", [{}, {"loss_on": "completion", "worked_fraction": [0.9, 0.1]}])
def test_pretrain_unpacked_runs_and_resumes_its_position(tmp_path, extra):
    from r1lab.train.config import PretrainConfig, from_dict
    from r1lab.train.pretrain import pretrain

    recipe = {
        "model": {"init": "tiny", "overrides": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 96,
                                                "moe_intermediate_size": 32, "q_lora_rank": 32, "kv_lora_rank": 16}},
        "data": {"source": "chain_add", "options": {"terms": 3, "digits": 1, "mod": 10, "solution": "prefix",
                                                    "wording": "last_digit"},
                 "style": "plain", "pack": False, **extra},
        "steps": 3, "batch_size": 4, "seq_len": 48, "threads": 1, "out_dir": str(tmp_path / "run"),
        "eval": {"every": 3, "heldout_rows": 4}, "log": {"every": 1, "sample_every": 0},
        "checkpoint": {"every": 0},
    }
    summary = pretrain(from_dict(PretrainConfig, recipe))
    assert summary["step"] == 3 and summary["final"]
    import json
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tokens"] < 4 * 48 for r in recs if "tokens" in r)       # padding is not counted
    assert any("heldout_loss" in r for r in recs)
    with pytest.raises(TrainError, match="pack"):
        PretrainData(pack="no")


CHAIN7 = {"terms": 7, "digits": 1, "mod": 10, "solution": "prefix", "wording": "last_digit"}


@pytest.mark.parametrize("pack", [False, True])
def test_completion_only_rows_train_on_the_completion_and_eos(pack):
    """loss_on: completion — every prompt token (and BOS) is input, never a target; the
    completion is tokenized as a generator sees it after the prompt."""
    from r1lab.tasks.synthetic import document_parts
    from r1lab.train.data import PAD, PackedDocuments, PaddedDocuments, split_rows

    tok = load_tokenizer()
    docs = SyntheticDocuments(CHAIN7, 0.5, "plain", seed=3, source="chain_add", parts=True)
    whole = SyntheticDocuments(CHAIN7, 0.5, "plain", seed=3, source="chain_add")
    for i in range(4):
        prompt, completion = docs[i]
        assert prompt + completion == whole[i] and completion.startswith(" <think>")
    task = get_task("chain_add", **CHAIN7)
    for ex, style in zip(task.examples("train"), ("plain", "r1_zero", "chat", "plain")):
        prompt, completion = document_parts(ex, True, style)
        want = task.prompt(ex, style)
        if style == "chat":
            from r1lab.tokenizer import render_chat
            want = render_chat(want, add_generation_prompt=True)
        assert prompt == want                                # exactly what the generator is given
    rows = (PackedDocuments if pack else PaddedDocuments)(docs, tok, 60).next_rows(4)
    inputs, targets = split_rows(rows)
    if not pack:
        for i in range(4):
            prompt, completion = docs[i]
            p_ids = [tok.bos_token_id] + tok.encode(prompt)
            c_ids = tok.encode(completion) + [tok.eos_token_id]
            n = len(p_ids) + len(c_ids)
            assert inputs[i, :n - 1].tolist() == (p_ids + c_ids)[:-1]          # the model reads the whole document
            assert targets[i, :len(p_ids) - 1].eq(-100).all()                  # no loss on the prompt
            assert targets[i, len(p_ids) - 1:n - 1].tolist() == c_ids           # loss on completion + EOS
            assert targets[i, n - 1:].eq(-100).all() and rows[i, n:].eq(PAD).all()
    else:   # packed: the first row's trained tokens are exactly the completions' (+ EOS), in order
        trained = targets[0][targets[0] != -100].tolist()
        want = []
        for i in range(4):
            want += tok.encode(docs[i][1]) + [tok.eos_token_id]
        assert len(trained) > 15 and trained == want[:len(trained)]
    assert int(inputs.min()) >= 0
    # the same documents with loss on all tokens: only BOS / padding are untrained
    all_rows = PaddedDocuments(whole, tok, 60).next_rows(2)
    _, all_targets = split_rows(all_rows)
    assert (all_targets != -100).sum() > (split_rows(PaddedDocuments(docs, tok, 60).next_rows(2))[1] != -100).sum()


def test_worked_fraction_ramp_moves_from_start_to_end():
    docs = SyntheticDocuments(CHAIN7, [0.9, 0.1], "plain", seed=0, source="chain_add", total_docs=20 * 1024)
    assert docs.fraction_of_shard(0) == pytest.approx(0.9 - 0.8 * 0.5 / 20)
    assert docs.fraction_of_shard(9) == pytest.approx(0.9 - 0.8 * 9.5 / 20)
    assert docs.fraction_of_shard(19) == pytest.approx(0.1 + 0.8 * 0.5 / 20)
    assert docs.fraction_of_shard(40) == pytest.approx(0.1)                    # after the run: the end value
    worked = [sum(" so the answer is " in docs[s * 1024 + j] for j in range(1024)) / 1024 for s in (0, 19)]
    assert worked[0] > 0.8 and worked[1] < 0.2
    assert docs.worked_fraction == 0.1                                          # held-out documents: the end value
    with pytest.raises(DataError, match="ramp"):
        SyntheticDocuments(CHAIN7, [0.9, 0.1], "plain", seed=0, source="chain_add")


def test_pretrain_data_config_checks_loss_on_and_worked_fraction():
    assert PretrainData(source="chain_add", worked_fraction=[0.9, 0.1]).worked_fraction == [0.9, 0.1]
    assert PretrainData(source="chain_add", loss_on="completion").loss_on == "completion"
    for bad in ([0.9], [0.5, 1.5], "half", [0.1, 0.2, 0.3], True):
        with pytest.raises(TrainError, match="worked_fraction"):
            PretrainData(source="chain_add", worked_fraction=bad)
    with pytest.raises(TrainError, match="loss_on"):
        PretrainData(source="chain_add", loss_on="answer")
    with pytest.raises(TrainError, match="loss_on.*synthetic"):
        PretrainData(source="files", paths=["x.txt"], loss_on="completion")

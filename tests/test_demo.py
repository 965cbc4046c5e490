"""`r1lab demo` (R1-Zero on a base checkpoint, by default the shipped one): the plumbing end
to end on a few steps, the response-shape breakdown on known samples, and its errors."""

import json

import pytest

from r1lab.checkpoint import save_model
from r1lab.config import preset
from r1lab.demo_r1zero import DEMO_RECIPE, DemoError, breakdown, run_demo
from r1lab.model import build_model
from r1lab.tokenizer import SHIPPED_TOKENIZER_DIR

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 96, "moe_intermediate_size": 32,
        "q_lora_rank": 32, "kv_lora_rank": 16}


def _sample(question, completion, correct, tokens):
    return {"question": question, "completion": completion, "correct": correct, "num_tokens": tokens}


def test_breakdown_separates_direct_and_reasoning_answers():
    rows = [
        _sample("1+2", "<think> </think> <answer> 3 </answer>", True, 10),
        _sample("1+2+3", "<think> </think> <answer> 7 </answer>", False, 10),
        _sample("1+2+3", "<think> 1+2=3 3+3=6 </think> <answer> 6 </answer>", True, 30),
        _sample("1+2+3+4", "<think> 1+2=3 3+3=6 6+4=9 </think> <answer> 9 </answer>", False, 40),
    ]
    b = breakdown(rows)
    assert b["direct"] == {"share": 0.5, "accuracy": 0.5, "mean_tokens": 10}
    assert b["reasoning"] == {"share": 0.5, "accuracy": 0.5, "mean_tokens": 35}
    assert b["by_terms"]["3"] == {"pass@1": 0.5, "mean_response_tokens": 20, "reasoning_share": 0.5}
    assert b["by_terms"]["2"]["pass@1"] == 1.0 and b["by_terms"]["4"]["reasoning_share"] == 1.0


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "ckpt"
    save_model(build_model(preset("tiny").replace(**TINY), seed=0), path, tokenizer=SHIPPED_TOKENIZER_DIR)
    return path


def test_demo_end_to_end_in_a_few_steps(tmp_path, capsys, base):
    out = tmp_path / "demo"
    assert run_demo(base, out_dir=out, steps=2, questions=4, k=2, threads=2) == 0
    summary = json.loads((out / "summary.json").read_text())
    for side in ("before", "after"):
        for key in ("pass@1", "mean_response_tokens", "format_rate"):
            assert isinstance(summary[side][key], float)
        assert 0 <= summary[side]["pass@1"] <= 1
    assert summary["rl_steps"] == 2 and summary["base_model"] == str(base)
    assert (out / "length_hist.png").stat().st_size > 1000
    assert (out / "grpo" / "final" / "config.json").is_file()
    assert any((out / "grpo" / "plots").glob("*.png"))
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "accuracy, direct (short) answers" in printed and "before:" in printed


def test_demo_errors_are_clear(tmp_path, base):
    with pytest.raises(DemoError, match="not found"):
        run_demo(base, out_dir=tmp_path, recipe=tmp_path / "nope.yaml")
    with pytest.raises(DemoError, match="pretrain"):
        run_demo(tmp_path / "no-such-base", out_dir=tmp_path)
    assert DEMO_RECIPE.is_file()


def test_demo_flags_of_the_other_demo_are_an_error(capsys):
    from r1lab.cli import main

    assert main(["demo", "--foundation", "--steps", "3", "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert "--steps, --k apply to the R1-Zero demo, not to --foundation" in err
    assert "\n" == err[-1] and err.count("\n") == 1
    assert main(["demo", "--seconds", "5"]) == 2
    assert "--seconds applies to --foundation only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:                   # argparse's usage + one error line
        main(["demo", "--seed", "-1"])
    assert e.value.code == 2 and "--seed: must be a non-negative integer" in capsys.readouterr().err


def test_shipped_base_model_loads_by_name_and_knows_its_worked_form():
    """The shipped r1zero-base (recipes/base_tiny.yaml, bf16 in the package) loads by name
    wherever a checkpoint directory does, and — forced into a worked solution — computes the
    running last digits; a direct answer is near chance (the task's design)."""
    import torch

    from r1lab.checkpoint import SHIPPED_DIR, load_model, resolve_checkpoint
    from r1lab.tasks import get_task
    from r1lab.tasks.synthetic import document_parts
    from r1lab.tokenizer import load_tokenizer

    path = resolve_checkpoint("r1zero-base")
    assert path == SHIPPED_DIR / "r1zero-base"
    assert sum(f.stat().st_size for f in path.iterdir()) < 20 * 2**20
    model = load_model("r1zero-base").eval()
    tok = load_tokenizer(path)
    task = get_task("chain_add", terms=10, digits=1, mod=4, solution="prefix", wording="digit_sum")
    right = {True: 0, False: 0}
    examples = [ex for ex, _ in zip(task.examples("test"), range(40))]
    for ex in examples:
        for worked in (True, False):
            prompt, completion = document_parts(ex, worked, "plain")
            p = [tok.bos_token_id] + tok.encode(prompt)
            ids = torch.tensor([p + tok.encode(completion)])
            with torch.no_grad():
                pred = model(ids[:, :-1]).logits[0, len(p) - 1:].argmax(-1)
            good = pred == ids[0, len(p):]          # every token, teacher-forced ...
            if worked:                              # ... but the choice to reason, which the base rarely makes
                good[len(tok.encode(" <think> "))] = True
            right[worked] += bool(good.all())
    assert right[True] / len(examples) >= 0.8
    assert right[False] / len(examples) <= 0.5          # chance is 0.25


@pytest.mark.slow      # two minutes of RL: `make test-all` runs it (make demo runs the full 90 steps)
def test_r1_zero_on_the_shipped_base_lifts_accuracy_and_length(tmp_path):
    """A shortened `r1lab demo` (45 of the recipe's 90 steps, 32 questions × 2 samples): RL
    with a correctness reward alone already shifts the base from direct answers to worked
    ones — more right and longer — on held-out questions."""
    out = tmp_path / "demo"
    assert run_demo("r1zero-base", out_dir=out, steps=45, questions=32, k=2, threads=2) == 0
    s = json.loads((out / "summary.json").read_text())
    before, after = s["before"], s["after"]
    assert before["reasoning"]["share"] <= 0.1 and before["pass@1"] <= 0.45
    assert after["reasoning"]["share"] >= 0.4
    assert after["pass@1"] - before["pass@1"] >= 0.2
    assert after["mean_response_tokens"] >= 1.4 * before["mean_response_tokens"]
    assert after["reasoning"]["accuracy"] >= 0.8 and after["format_rate"] >= 0.95

"""The evaluation harness (tasks/rewards/eval issue): metrics against brute force, the
engine path on a random tiny model, the endpoint path against a local stub
OpenAI-compatible server, and clear errors."""

import itertools
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from r1lab import build_model, load_tokenizer, preset, save_model
from r1lab.eval import EvalError, evaluate, majority_vote, pass_at_k, pass_k_values
from r1lab.tasks import TaskError


# ----------------------------------------------------------------------- metrics
def brute_pass_at_k(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
    assert pass_at_k(64, 0, 64) == 0.0 and pass_at_k(64, 1, 64) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)         # pass@1 = c/n
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    assert pass_k_values(16) == [1, 2, 4, 8, 16] and pass_k_values(6) == [1, 2, 4, 6] and pass_k_values(1) == [1]


def test_majority_vote_counts_equivalent_answers_as_one_vote():
    from r1lab.rewards.math import equivalent
    keys = ["7", "\\frac{1}{2}", "0.5", "1/2", "7", None, None, None]
    assert majority_vote(keys) == 0                   # by text, "7" (2 votes) beats each form of 1/2
    assert majority_vote(keys, equivalent) == 1       # by value, 1/2 has 3 votes
    assert majority_vote([None, None]) is None
    assert majority_vote(["3", "4", "4", "3"]) == 0   # a tie goes to the group seen first


# ----------------------------------------------------------------------- engine path
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_model(build_model(preset("tiny"), seed=0), d, tokenizer=load_tokenizer())
    return d


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_eval_cli_on_a_random_tiny_model_is_reproducible(tiny_dir, tmp_path):
    args = ["eval", "--task", "gsm8k", "--model", str(tiny_dir), "--limit", "8", "--k", "2", "--max-tokens", "16"]
    a = run_cli(*args, "--seed", "3", "--output", str(tmp_path / "a"))
    assert a.returncode == 0, a.stderr
    assert "| gsm8k | test | 8 | 2 |" in a.stdout
    b = run_cli(*args, "--seed", "3", "--output", str(tmp_path / "b"))
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
    rows = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["sample"] for r in rows} == {0, 1} and rows[0]["gold"] == "18"
    assert all(r["num_tokens"] <= 16 and r["finish_reason"] in ("stop", "length") for r in rows)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    for key in ("pass@1", "cons@2", "pass@k", "mean_response_tokens", "format_rate", "truncation_rate"):
        assert key in summary
    assert summary["mean_response_tokens"] == pytest.approx(sum(r["num_tokens"] for r in rows) / 16)
    assert (tmp_path / "a" / "summary.md").read_text().startswith("| task |")
    c = run_cli(*args, "--seed", "4", "--output", str(tmp_path / "c"))
    assert c.returncode == 0
    assert (tmp_path / "c" / "samples.jsonl").read_text() != (tmp_path / "a" / "samples.jsonl").read_text()


def test_evaluate_in_memory_model_and_results_do_not_depend_on_cache_budget(tiny_dir):
    from r1lab import load_model
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    kw = dict(k=3, max_tokens=12, limit=5, seed=1, progress=False, task_options={"digits": [1, 2]})
    big = evaluate("arithmetic", model=model, tokenizer=tok, **kw)
    small = evaluate("arithmetic", model=model, tokenizer=tok, kv_cache_mb=1.0, **kw)  # one request at a time
    drop = ("seconds",)
    assert {k: v for k, v in big.items() if k not in drop} == {k: v for k, v in small.items() if k not in drop}
    assert big["prompt_style"] == "r1_zero" and big["examples"] == 5


# ----------------------------------------------------------------------- endpoint path
class StubOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions and /v1/completions from a script: the reply texts for a
    prompt are looked up by a substring of the prompt. Records every request body."""

    script: dict = {}
    requests: list = []
    max_choices = None      # a server that ignores n

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        if body.get("model") != "stub-r1":
            return self._send(404, {"error": {"message": f"model {body.get('model')} does not exist"}})
        texts = next(v for k, v in self.script.items() if k in prompt)
        n = body.get("n", 1) if self.max_choices is None else min(body.get("n", 1), self.max_choices)
        choices = []
        for i in range(n):
            text = texts[i % len(texts)]
            if "messages" in body:
                reasoning, _, answer = text.partition("</think>")
                msg = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
                choices.append({"index": i, "message": msg, "finish_reason": "stop"})
            else:
                choices.append({"index": i, "text": text, "finish_reason": "stop"})
        obj = "chat.completion" if "messages" in body else "text_completion"
        self._send(200, {"id": "x", "object": obj, "created": 0, "model": "stub-r1", "choices": choices,
                         "usage": {"prompt_tokens": 1, "completion_tokens": 10 * n, "total_tokens": 10 * n + 1}})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def stub():
    StubOpenAI.requests = []
    StubOpenAI.max_choices = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture()
def qa_file(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "What is one half?", "answer": "\\frac{1}{2}"}) + "\n"
                 + json.dumps({"question": "What is 2+1?", "answer": "3"}) + "\n")
    return p


def test_endpoint_mode_with_equivalence_aware_cons_at_k(stub, qa_file):
    StubOpenAI.script = {
        "one half": ["I think</think>\\boxed{0.5}", "hmm</think>\\boxed{\\frac12}", "no</think>\\boxed{7}",
                     "guess</think>\\boxed{7}", "again</think>\\boxed{1/2}"],
        "2+1": ["easy</think>\\boxed{4}", "wait</think>\\boxed{4}", "so</think>\\boxed{3}", "x</think>\\boxed{3.0}",
                "the answer is 3 but I won't box it</think>3"],
    }
    s = evaluate(str(qa_file), endpoint=stub, served_model="stub-r1", k=5, seed=0, progress=False)
    # q1: 3/5 correct, majority {0.5, 1/2, \frac12} (3 votes) vs {7} (2) -> right
    # q2: 2/5 correct, majority {3, 3.0} (2) vs {4} (2): tie -> the group seen first ("4") -> wrong
    assert s["pass@1"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert s["cons@5"] == pytest.approx(0.5)
    assert s["pass@k"]["5"] == 1.0 and s["pass@k"]["1"] == pytest.approx(s["pass@1"])
    assert s["mean_response_tokens"] == 10.0 and s["format_rate"] == 1.0
    path, body = StubOpenAI.requests[0]
    assert path.endswith("/chat/completions") and body["temperature"] == 0.6 and body["top_p"] == 0.95
    assert body["max_tokens"] == 32768 and body["n"] == 5                       # SPEC §7 defaults
    assert "\\boxed{}" in body["messages"][0]["content"] and len(body["messages"]) == 1   # no system prompt


def test_endpoint_that_ignores_n_and_completions_api(stub, qa_file):
    StubOpenAI.script = {"one half": ["</think>\\boxed{0.5}"], "2+1": ["</think>\\boxed{3}"]}
    StubOpenAI.max_choices = 1
    s = evaluate(str(qa_file), endpoint=stub, served_model="stub-r1", k=4, progress=False)
    assert s["pass@1"] == 1.0 and len(StubOpenAI.requests) == 8        # asked again until k samples
    StubOpenAI.requests = []
    StubOpenAI.script = {"one half": ["<think> half </think> <answer> 1/2 </answer>"],
                         "2+1": ["<think> 2+1 </think> <answer> 3 </answer>"]}
    s = evaluate(str(qa_file), endpoint=stub, served_model="stub-r1", k=2, prompt_style="r1_zero", progress=False)
    assert StubOpenAI.requests[0][0].endswith("/completions") and "/chat/" not in StubOpenAI.requests[0][0]
    assert StubOpenAI.requests[0][1]["prompt"].startswith("A conversation between User and Assistant")
    assert s["pass@1"] == 1.0 and s["format_rate"] == 1.0


def test_endpoint_errors_are_clear(stub, qa_file):
    with pytest.raises(EvalError, match="404|does not exist"):
        evaluate(str(qa_file), endpoint=stub, served_model="nope", k=1, progress=False)
    p = run_cli("eval", "--task", str(qa_file), "--endpoint", "http://127.0.0.1:9/v1", "--served-model", "x",
                "--k", "1", timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("r1lab: error: cannot reach the endpoint http://127.0.0.1:9/v1")


# ----------------------------------------------------------------------- bad input
def test_unknown_task_and_malformed_jsonl_are_clear_errors(tiny_dir, tmp_path):
    p = run_cli("eval", "--task", "gsm9k", "--model", str(tiny_dir), "--k", "1")
    assert p.returncode == 2 and "unknown task 'gsm9k'" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": \n')
    p = run_cli("eval", "--task", str(bad), "--model", str(tiny_dir), "--k", "1")
    assert p.returncode == 2 and "line 2" in p.stderr and "Traceback" not in p.stderr
    with pytest.raises(TaskError, match="line 2"):
        evaluate(str(bad), model=str(tiny_dir), k=1, progress=False)
    p = run_cli("eval", "--task", "gsm8k", "--k", "1")
    assert p.returncode == 2 and "--model DIR or --endpoint URL" in p.stderr
    with pytest.raises(EvalError, match="k must be"):
        evaluate("gsm8k", model=str(tiny_dir), k=0, progress=False)
    with pytest.raises(EvalError, match="split"):
        evaluate("gsm8k", model=str(tiny_dir), split="validation", k=1, progress=False)

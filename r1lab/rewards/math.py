"""Math answer checking: the accuracy reward of SPEC §4 and the correctness rule of SPEC §7.

A completion is scored in three steps:

1. **Split** it with ``reasoning.split_reasoning`` and keep only the *answer part* (what
   follows ``</think>``). An answer that appears only in the reasoning scores 0: the model
   has to state it after thinking (SPEC §4 format, SPEC §8 chat form).
2. **Extract** the final answer from the answer part (``EXTRACT_MODES``):
   ``"boxed"`` the last ``\\boxed{}``; ``"answer_tag"`` the ``<answer>…</answer>`` content
   (the box inside it when there is one); ``"auto"`` either (``reasoning.extract_answer``);
   ``"last_number"`` the last number (for weak models on GSM8K).
3. **Compare** it with the gold answer by mathematical equivalence. Identical strings
   (after trivial normalisation) and equal plain numbers (``27`` = ``27.0`` = ``027``,
   ``1,000`` = ``1000``) are decided here; everything else goes to the ``math-verify``
   package (``\\frac12`` = ``0.5`` = ``1/2``, ``\\sqrt8`` = ``2\\sqrt2``, sets, intervals …).

Rules we chose, following math-verify (tests/test_rewards_math.py freezes them):

* **units** written in LaTeX text are ignored: ``10\\text{ cm}`` = ``10``; so are ``^\\circ``
  and ``\\$``. A plain-text answer with exactly one number and words around it
  (``18 dollars``, ``The answer is 5``) is read by math-verify's free-text extraction
  (→ ``18``, ``5``); with two or more numbers (``3 or 4``) it is read as one LaTeX
  expression, which in practice fails: hedging between several numbers earns nothing.
* **percent**: ``50\\%`` equals both ``50`` and ``0.5`` (math-verify is lenient here).
* **equations**: a predicted ``x = 2`` against gold ``2`` compares the right-hand side
  (correct); so does a gold ``x = 2`` against a predicted ``2``.
* **numbers** compare exactly unless one side is a decimal, which is rounded to 6 places
  (``0.333333`` = ``1/3``, ``0.33`` ≠ ``1/3``, ``0.51`` ≠ ``1/2``).

math-verify's own timeouts (``parse(parsing_timeout=)``, ``verify(timeout_seconds=)``) use
``signal.alarm`` and work only in the main thread of a process, and they cannot interrupt
long C-level computations. So the comparison runs in a small pool of worker *processes*
(``Verifier``), each item under a hard deadline longer than math-verify's timeouts; a
worker that misses it, crashes or runs out of memory is killed and replaced and that item
scores 0. The caller is never stalled and never crashes on hostile input (huge powers,
200 kB of LaTeX, thousands of nested braces, invalid UTF-8). An extracted answer longer
than ``MAX_ANSWER_CHARS`` or holding undecodable text (invalid UTF-8, lone surrogates) scores
0 without being parsed; undecodable text elsewhere in a completion does no harm.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from r1lab.reasoning import ANSWER, END_ANSWER, extract_answer, last_boxed, split_reasoning
from r1lab.rewards import RewardError, register_reward

EXTRACT_MODES = ("auto", "boxed", "answer_tag", "last_number")

# Named limits (STYLE.md habit 13).
MAX_ANSWER_CHARS = 4000          # a longer extracted answer scores 0 without being parsed
MAX_GOLD_CHARS = 20000           # a longer gold answer is only compared as a string
PARSE_TIMEOUT_S = 5              # math-verify parse() timeout per string (whole seconds: signal.alarm);
VERIFY_TIMEOUT_S = 5             # verify() timeout per comparison; both math-verify's own defaults
WORKER_STARTUP_TIMEOUT_S = 60.0  # importing sympy on a busy machine can be slow
WORKER_MEMORY_MB = 2048          # address-space limit of a worker (RLIMIT_AS); 0 = none
MAX_WORKERS = 8
MAX_DISPATCH_RETRIES = 2         # an item whose worker died before reading it is re-sent
CLOSE_WAIT_S = 5.0               # close() waits this long for a running verify_many


class VerifierError(RuntimeError):
    """The verification workers cannot run at all (e.g. math-verify is not installed)."""


# ---------------------------------------------------------------------- text helpers
REPLACEMENT_CHAR = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: Any) -> str:
    """``text`` as a str that encodes to UTF-8: invalid bytes and lone surrogates
    (``'\\udcff'``, from ``surrogateescape`` decoding) become U+FFFD."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str):
        text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub(REPLACEMENT_CHAR, text)
    return text


def answer_part(completion: Any, started_in_reasoning: bool = True) -> str:
    """The part of a completion after ``</think>`` (SPEC §8), via ``split_reasoning``."""
    return split_reasoning(clean_text(completion), started_in_reasoning=started_in_reasoning)[1]


_NUMBER_IN_TEXT = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def final_answer(completion: Any, mode: str = "auto", started_in_reasoning: bool = True) -> str | None:
    """The final answer of ``completion`` by extraction ``mode`` (see the module docstring),
    taken from the answer part only; None when there is none."""
    if mode not in EXTRACT_MODES:
        raise RewardError(f"unknown extract mode {mode!r}; known: {', '.join(EXTRACT_MODES)}")
    text = answer_part(completion, started_in_reasoning)
    if mode == "boxed":
        return last_boxed(text)
    if mode == "answer_tag":
        # extract_answer prefers the last complete <answer>…</answer>; only use it when one exists.
        start, end = text.find(ANSWER), text.rfind(END_ANSWER)
        if start < 0 or end < 0 or start + len(ANSWER) > end:
            return None
        return extract_answer(text)
    if mode == "last_number":
        numbers = _NUMBER_IN_TEXT.findall(text)
        return numbers[-1].replace(",", "") if numbers else None
    return extract_answer(text)


_SPACING = re.compile(r"\\[,!;: ]|\\(?:left|right)\b|~")
_DELIMS = re.compile(r"^\$+|\$+$|^\\\(|\\\)$|^\\\[|\\\]$")
_THIN_SPACE_IN_NUMBER = re.compile(r"(?<=\d)(?:\\[,;: ]|~)(?=\d{3}(?!\d))")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?")
_SPACE_BETWEEN_DIGITS = re.compile(r"(?<=\d)\s+(?=\d)")
_SPACE_ELSEWHERE = re.compile(r"(?<!\d)\s+|\s+(?!\d)")


def _trivial_norm(s: str) -> str:
    """Whitespace, ``$`` delimiters, ``\\left``/``\\right``, LaTeX spacing, ``\\dfrac``,
    a trailing period: differences that never change the value."""
    s = _DELIMS.sub("", s.strip()).strip()
    s = _SPACING.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACE_BETWEEN_DIGITS.sub(" ", s.strip())      # "1 2" must not become "12"
    s = _SPACE_ELSEWHERE.sub("", s)
    return s[:-1] if s.endswith(".") and not s.endswith("..") else s


def _plain_number(s: str) -> Fraction | None:
    """The exact value of a plain decimal number (``-1,000.50``), else None."""
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    return Fraction(s.replace(",", "").rstrip("."))


def normalize_answer(answer: str) -> str:
    """A canonical string for an answer (used as a voting key): trivial normalisation,
    plain numbers written canonically (``27.0`` → ``27``, ``1,000`` → ``1000``,
    ``.50`` → ``0.5``), degree marks dropped. Equal keys mean equal answers; different keys
    may still be equivalent (``equivalent`` decides)."""
    s = _DEGREES.sub("", _trivial_norm(clean_text(answer)))
    value = _plain_number(s)
    if value is None:
        return s
    if value.denominator == 1:
        return str(value.numerator)
    return format(Decimal(s.replace(",", "").rstrip(".")).normalize(), "f")


def answer_key(completion: Any, extract: str = "auto", started_in_reasoning: bool = True) -> str | None:
    """The canonical extracted answer of a completion for majority voting (cons@k, SPEC §7);
    None when the completion has no (usable) answer."""
    ans = final_answer(completion, extract, started_in_reasoning)
    if ans is None or not ans.strip() or len(ans) > MAX_ANSWER_CHARS or REPLACEMENT_CHAR in ans:
        return None
    return normalize_answer(ans)


def _fast_path(answer: str, gold: str) -> float | None:
    """1.0 / 0.0 when the pair is decided without math-verify, else None."""
    a, g = _trivial_norm(answer), _trivial_norm(gold)
    if a and a == g:
        return 1.0
    na, ng = _plain_number(a), _plain_number(g)
    if na is not None and ng is not None:
        if na == ng:
            return 1.0
        if "." not in a and "." not in g:   # two integers: exact, math-verify agrees
            return 0.0
    return None


_COMMAND = re.compile(r"\\[A-Za-z]+")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}")
_WORD = re.compile(r"(?<![\\A-Za-z0-9])[A-Za-z]{2,}(?![A-Za-z0-9])")
_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")


def _parse_inputs(answer: str) -> list[str]:
    """The strings math-verify parses for one answer, in order of preference (the worker
    uses the first that yields a math object).

    A bare answer is wrapped in ``$…$`` (one line) so math-verify reads all of it as LaTeX.
    Text with its own math delimiters is passed as is. Prose with exactly one number
    (``18 dollars``) is first tried as free text, then wrapped (see the module docstring)."""
    s = _THIN_SPACE_IN_NUMBER.sub("", answer.strip())
    s = " ".join(s.split())
    if _MATH_DELIMITER.search(s):
        return [s]
    wrapped = f"${s}$"
    bare = _COMMAND.sub(" ", _TEXT_GROUP.sub(" ", s))
    if _WORD.search(bare) and len(_NUMBER_IN_TEXT.findall(bare)) == 1:
        return [s, wrapped]
    return [wrapped]


# ---------------------------------------------------------------------- worker process
# The worker runs as ``python -c _WORKER_SOURCE``: it must not import r1lab (which imports
# torch) and must not see r1lab/rewards/ on sys.path (our math.py would shadow the stdlib).
# Protocol: JSON lines. Worker → parent first {"ready": true} (or {"ready": false,
# "error": …}); then for each request {"id", "op": "verify"|"equiv", "gold": [str],
# "pred": [str]} one reply {"id", "ok": bool}.
_WORKER_SOURCE = r'''
import sys
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
import json, logging, os, signal, warnings

WARMUP = [
    (r"$\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]$", r"$[\frac{\pi^2}{8}, \frac{5\pi^2}{4}]$"),
    (r"$\{1,2\}$", r"$\{2,1\}$"), (r"$(1, \sqrt{2}, 3)$", r"$(1,\sqrt2,3)$"),
    ("$x^2+2x+1$", "$(x+1)^2$"), (r"$x \le 3$", r"$(-\infty,3]$"), (r"$\sin x + \log_2 8$", r"$\sin(x)+3$"),
    (r"$\begin{pmatrix}1\\2\end{pmatrix}$", r"$\begin{pmatrix}1\\2\end{pmatrix}$"), (r"$50\%$", "$0.5$"),
]


def main(parse_timeout, verify_timeout, memory_mb, warmup):
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's business
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)                                      # stray prints must not corrupt replies
    warnings.simplefilter("ignore")
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # timeouts would print the input
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        config = [LatexExtractionConfig(), ExprExtractionConfig()]
        parse("$1+1$", extraction_config=config, parsing_timeout=None)
    except BaseException as e:
        out.write(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        return
    if memory_mb:
        try:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, resource.getrlimit(resource.RLIMIT_AS)[1]))
        except (ImportError, ValueError, OSError):
            pass
    # sympy imports parts of itself on first use (seconds on a busy machine): load them now,
    # so that no real item spends its timeout on them.
    for a, b in WARMUP if warmup else ():
        try:
            verify(parse(a, extraction_config=config, parsing_timeout=None),
                   parse(b, extraction_config=config, parsing_timeout=None), timeout_seconds=None)
        except Exception:
            pass
    gold_cache = {}

    def parse_first(texts):
        found = []
        for text in texts:
            result = parse(text, extraction_config=config, parsing_timeout=parse_timeout)
            if any(not isinstance(x, str) for x in result):
                return result
            found = found or result
        return found

    def handle(req):
        key = tuple(req["gold"])
        gold = gold_cache.get(key)
        if gold is None:
            if len(gold_cache) > 512:
                gold_cache.clear()
            gold = gold_cache[key] = parse_first(req["gold"])
        pred = parse_first(req["pred"])
        if not gold or not pred:
            return False
        ok = verify(gold, pred, timeout_seconds=verify_timeout)
        if req["op"] == "equiv":
            ok = ok and verify(pred, gold, timeout_seconds=verify_timeout)
        return bool(ok)

    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return                                     # the parent closed the pipe or died
        req = json.loads(line)
        try:
            ok = handle(req)
        except BaseException:                          # incl. math-verify's TimeoutException
            ok = False
        out.write(json.dumps({"id": req["id"], "ok": ok}) + "\n")


main(*json.loads(sys.argv[1]))
'''


@dataclass
class _Worker:
    proc: subprocess.Popen
    started: float
    ready: bool = False
    buf: bytearray = field(default_factory=bytearray)
    job: int | None = None          # index of the item it is working on
    deadline: float = 0.0


def _default_workers() -> int:
    """``R1LAB_VERIFY_WORKERS`` if set, else half the CPUs, between 2 and ``MAX_WORKERS``."""
    env = os.environ.get("R1LAB_VERIFY_WORKERS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"R1LAB_VERIFY_WORKERS must be a positive integer, got {env!r}")
        return int(env)
    return max(2, min(MAX_WORKERS, (os.cpu_count() or 2) // 2))


class Verifier:
    """A reusable pool of math-verify worker processes (see the module docstring).

    ``verify_many([(answer, gold), …])`` returns one score (1.0 / 0.0) per pair, sending
    the items that need math-verify to the workers concurrently; ``equivalent_many`` does
    the same for symmetric answer-vs-answer checks (cons@k merging). Workers start on
    first use and are reused; ``close()`` stops them (a later call starts new ones).
    Calls from several threads are serialised. After ``fork`` the child leaves the
    parent's workers alone and starts its own.

    ``fast_path=False`` sends every pair to math-verify (tests use it to check that
    math-verify itself accepts each benchmark's gold answers). ``warmup=False`` skips
    loading sympy's lazily imported parts when a worker starts (faster start; the first
    items of a kind may then spend part of their timeout on imports).

    ``hard_timeout`` (seconds, per item, from the moment a worker receives it) defaults to
    ``3·parse_timeout + 2·verify_timeout + 5``: the longest a worker can legitimately take
    (gold, two parse attempts, two comparisons) plus slack.
    """

    def __init__(self, workers: int | None = None, parse_timeout: int = PARSE_TIMEOUT_S,
                 verify_timeout: int = VERIFY_TIMEOUT_S, hard_timeout: float | None = None,
                 memory_mb: int = WORKER_MEMORY_MB, startup_timeout: float = WORKER_STARTUP_TIMEOUT_S,
                 fast_path: bool = True, warmup: bool = True):
        for name, v in (("parse_timeout", parse_timeout), ("verify_timeout", verify_timeout)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a whole number of seconds >= 1 (signal.alarm), got {v!r}")
        self.workers = _default_workers() if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self.parse_timeout, self.verify_timeout = parse_timeout, verify_timeout
        self.hard_timeout = float(hard_timeout if hard_timeout is not None
                                  else 3 * parse_timeout + 2 * verify_timeout + 5)
        if self.hard_timeout <= max(parse_timeout, verify_timeout):
            raise ValueError("hard_timeout must be longer than math-verify's own timeouts")
        self.memory_mb, self.startup_timeout = int(memory_mb), float(startup_timeout)
        self.fast_path, self.warmup = fast_path, warmup
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        _INSTANCES.add(self)
        self.stats = {"pool_items": 0, "fast_path": 0, "timeouts": 0, "crashes": 0, "restarts": 0}

    # ------------------------------------------------------------------ public API
    def verify_many(self, pairs: Iterable[tuple[Any, Any]]) -> list[float]:
        """Score ``(answer, gold)`` pairs: 1.0 when the extracted ``answer`` (None = no
        answer) is equivalent to ``gold``, else 0.0."""
        return self._score(pairs, "verify")

    def verify(self, answer: Any, gold: Any) -> float:
        return self.verify_many([(answer, gold)])[0]

    def equivalent_many(self, pairs: Iterable[tuple[Any, Any]]) -> list[bool]:
        """Whether each pair of answers is equivalent both ways (for merging votes)."""
        return [s == 1.0 for s in self._score(pairs, "equiv")]

    def close(self) -> None:
        """Stop the workers (idempotent; the verifier starts new ones when used again)."""
        # At interpreter exit a daemon thread may still be verifying: wait a little, then
        # stop the workers anyway.
        locked = self._lock.acquire(timeout=CLOSE_WAIT_S)
        try:
            self._after_fork_check()
            for w in self._pool:
                self._kill(w)
            self._pool = []
        finally:
            if locked:
                self._lock.release()

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (for tests and monitoring)."""
        return [w.proc.pid for w in self._pool if w.proc.poll() is None]

    # ------------------------------------------------------------------ internals
    def _score(self, pairs: Iterable[tuple[Any, Any]], op: str) -> list[float]:
        items = list(pairs)
        results = [0.0] * len(items)
        todo: deque[tuple[int, dict]] = deque()
        for i, (answer, gold) in enumerate(items):
            if answer is None or gold is None:
                continue
            a, g = clean_text(answer), clean_text(gold)
            if not a.strip() or not g.strip() or len(a) > MAX_ANSWER_CHARS or REPLACEMENT_CHAR in a:
                continue                    # no answer, an oversized one, or undecodable text: 0
            fast = _fast_path(a, g) if self.fast_path else None
            if fast is not None:
                results[i] = fast
                self.stats["fast_path"] += 1
            elif len(g) <= MAX_GOLD_CHARS:
                todo.append((i, {"id": i, "op": op, "gold": _parse_inputs(g), "pred": _parse_inputs(a)}))
        if todo:
            with self._lock:
                self._after_fork_check()
                self._run(todo, results)
        return results

    def _after_fork_check(self) -> None:
        if os.getpid() != self._pid:        # we are a forked child: the workers are not ours
            for w in self._pool:
                for f in (w.proc.stdin, w.proc.stdout):
                    try:
                        f.close()
                    except OSError:
                        pass
                w.proc.returncode = -1      # never wait for another process's child
            self._pool, self._pid = [], os.getpid()

    def _spawn(self) -> _Worker:
        args = json.dumps([self.parse_timeout, self.verify_timeout, self.memory_mb, self.warmup])
        proc = subprocess.Popen([sys.executable, "-c", _WORKER_SOURCE, args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True)
        os.set_blocking(proc.stdout.fileno(), False)
        return _Worker(proc, time.monotonic())

    def _kill(self, w: _Worker) -> None:
        try:
            w.proc.kill()
        except OSError:
            pass
        for f in (w.proc.stdin, w.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _run(self, todo: deque[tuple[int, dict]], results: list[float]) -> None:
        self.stats["pool_items"] += len(todo)
        for w in [w for w in self._pool if w.proc.poll() is not None]:   # died while idle
            self._kill(w)
            self._pool.remove(w)
        while len(self._pool) < min(self.workers, len(todo)):
            self._pool.append(self._spawn())
        retries: dict[int, int] = {}
        startup_failures = 0
        sel = selectors.DefaultSelector()
        try:
            for w in self._pool:
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
            while todo or any(w.job is not None for w in self._pool):
                for w in self._pool:                      # hand out work to idle workers
                    if w.ready and w.job is None and todo:
                        i, req = todo.popleft()
                        try:
                            w.proc.stdin.write((json.dumps(req) + "\n").encode("utf-8"))
                            w.proc.stdin.flush()
                        except (BrokenPipeError, OSError):
                            retries[i] = retries.get(i, 0) + 1
                            if retries[i] <= MAX_DISPATCH_RETRIES:
                                todo.appendleft((i, req))
                            self._replace(w, sel, crashed=True)
                            break
                        w.job, w.deadline = i, time.monotonic() + self.hard_timeout
                now = time.monotonic()
                deadlines = [w.deadline if w.job is not None else w.started + self.startup_timeout
                             for w in self._pool if w.job is not None or not w.ready]
                wait = max(0.0, min(deadlines) - now) if deadlines else 0.0
                for key, _ in sel.select(timeout=min(wait, 1.0) + 0.01):
                    w = key.data
                    if w in self._pool:
                        startup_failures += self._read(w, sel, results)
                now = time.monotonic()
                for w in list(self._pool):
                    if w.job is not None and now > w.deadline:
                        results[w.job] = 0.0              # stuck: kill it, the item scores 0
                        self.stats["timeouts"] += 1
                        self._replace(w, sel)
                    elif not w.ready and now > w.started + self.startup_timeout:
                        startup_failures += 1
                        self._replace(w, sel)
                if startup_failures > 2 * self.workers + 2:
                    raise VerifierError(f"math-verify workers did not start within {self.startup_timeout:.0f} s")
        except BaseException:
            # Interrupted (an error, Ctrl-C): workers still holding items of this call would
            # answer into the next one, so stop them.
            for w in [w for w in self._pool if w.job is not None]:
                self._kill(w)
                self._pool.remove(w)
            raise
        finally:
            sel.close()

    def _replace(self, w: _Worker, sel: selectors.BaseSelector, crashed: bool = False) -> None:
        try:
            sel.unregister(w.proc.stdout)
        except (KeyError, ValueError):
            pass
        self._kill(w)
        self.stats["restarts"] += 1
        if crashed:
            self.stats["crashes"] += 1
        new = self._spawn()
        self._pool[self._pool.index(w)] = new
        sel.register(new.proc.stdout, selectors.EVENT_READ, new)

    def _read(self, w: _Worker, sel: selectors.BaseSelector, results: list[float]) -> int:
        """Consume what ``w`` wrote; returns 1 when it failed during startup."""
        try:
            chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return 0
        except OSError:
            chunk = b""
        if not chunk:                                     # EOF: the worker died
            was_ready = w.ready
            if w.job is not None:
                results[w.job] = 0.0
            self._replace(w, sel, crashed=True)
            return 0 if was_ready else 1
        w.buf += chunk
        while b"\n" in w.buf:
            line, _, rest = bytes(w.buf).partition(b"\n")
            w.buf = bytearray(rest)
            msg = json.loads(line)
            if "ready" in msg:
                if not msg["ready"]:
                    raise VerifierError(f"math-verify worker cannot start: {msg.get('error')} "
                                        f"(install it with `pip install math-verify`)")
                w.ready = True
            elif w.job is not None and msg.get("id") == w.job:
                results[w.job] = 1.0 if msg.get("ok") else 0.0
                w.job = None
        return 0


# ---------------------------------------------------------------------- module-level verifier
_VERIFIER: Verifier | None = None
_VERIFIER_LOCK = threading.Lock()
_INSTANCES: weakref.WeakSet[Verifier] = weakref.WeakSet()   # every Verifier, for fork and exit


def get_verifier() -> Verifier:
    """The process-wide ``Verifier``, created on first use and reused."""
    global _VERIFIER
    with _VERIFIER_LOCK:
        if _VERIFIER is None:
            _VERIFIER = Verifier()
        return _VERIFIER


def close_verifier() -> None:
    """Stop the process-wide verifier's workers."""
    if _VERIFIER is not None:
        _VERIFIER.close()


def _close_all() -> None:
    for v in list(_INSTANCES):
        v.close()


def _reset_after_fork() -> None:
    """In a forked child: drop (never kill) the parent's workers; fresh locks, since another
    thread of the parent may have held one at the moment of the fork."""
    global _VERIFIER_LOCK
    _VERIFIER_LOCK = threading.Lock()
    for v in list(_INSTANCES):
        v._lock = threading.Lock()
        v._after_fork_check()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# ---------------------------------------------------------------------- public functions
def accuracy_many(completions: Sequence[Any], golds: Sequence[Any], *, extract: str = "auto",
                  started_in_reasoning: bool = True) -> list[float]:
    """``accuracy`` for many completions at once (the pool checks them concurrently)."""
    if len(completions) != len(golds):
        raise RewardError(f"{len(completions)} completions but {len(golds)} gold answers")
    answers = [final_answer(c, extract, started_in_reasoning) for c in completions]
    return get_verifier().verify_many(zip(answers, golds))


def accuracy(completion: Any, gold: Any, *, extract: str = "auto", started_in_reasoning: bool = True) -> float:
    """1.0 when the final answer in ``completion``'s answer part equals ``gold``, else 0.0.

    ``started_in_reasoning`` says whether the prompt already opened ``<think>`` (SPEC §8's
    R1 chat prompt does; it is the default). Then text before ``</think>`` is reasoning,
    and a completion with no ``</think>`` at all is all reasoning and scores 0. Pass False
    for prompts that do not open thinking (R1-Zero's plain prompt, SPEC §4; plain
    questions): text without tags is then all answer. A completion that starts with its
    own ``<think>`` is handled the same either way.
    """
    return accuracy_many([completion], [gold], extract=extract, started_in_reasoning=started_in_reasoning)[0]


def equivalent(a: Any, b: Any) -> bool:
    """Whether two extracted answers are mathematically equivalent (both directions of
    math-verify); used by cons@k to merge votes (SPEC §7)."""
    return get_verifier().equivalent_many([(a, b)])[0]


def _gold_of(example: Any) -> Any:
    gold = example.get("gold") if isinstance(example, dict) else getattr(example, "gold", None)
    if gold is not None and not isinstance(gold, (str, int, float)):
        raise RewardError(f"the accuracy reward needs a math answer as gold, got {type(gold).__name__}")
    return gold


@register_reward("accuracy")
def accuracy_reward(completions: Sequence[str], examples: Sequence[Any], extract: str = "auto",
                    started_in_reasoning: bool = True) -> list[float]:
    """SPEC §4 accuracy reward: 1.0 for a correct final answer in the answer part, else 0.0.
    Options: ``extract`` (one of ``EXTRACT_MODES``), ``started_in_reasoning`` (see ``accuracy``)."""
    if extract not in EXTRACT_MODES:
        raise RewardError(f"unknown extract mode {extract!r}; known: {', '.join(EXTRACT_MODES)}")
    return accuracy_many(completions, [_gold_of(ex) for ex in examples], extract=extract,
                         started_in_reasoning=started_in_reasoning)

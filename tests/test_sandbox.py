"""The code sandbox, the ``code`` reward and the HumanEval/MBPP tasks.

Acceptance: every reference solution of HumanEval (164) and MBPP (974, with
``challenge_test_list``) scores 1; hostile programs (infinite loop, fork bomb, 10 GB
allocation, deleting files outside the sandbox, sockets, ``os._exit(0)``, 100 MB of output,
a huge file) score 0, are stopped within the limits and leave the machine and the caller
unharmed. The isolation layers (reliability guard, dropped uid, Landlock, namespaces) are
also checked one at a time, so that each is known to hold on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from r1lab.rewards import REWARDS
from r1lab.rewards.code import (
    build_program, code_blocks, code_details, code_reward, extract_code, humaneval_source, normalize_code, split_check,
)
from r1lab.rewards.sandbox import Limits, Program, SandboxError, SandboxResult, run_many, run_program
from r1lab.rewards.sandbox import runner as sandbox_runner
from r1lab.rewards.sandbox.interpreter import choose_interpreter, read_allow_list
from r1lab.tasks import TASKS, Example, TaskError, get_task
from r1lab.tasks.code import HUMANEVAL_FILE, MBPP_FILE, MBPP_SPLITS, HumanEval, MBPP

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "benchmarks"
IS_ROOT = os.geteuid() == 0
SANDBOX_PKG = ROOT / "r1lab" / "rewards" / "sandbox"

FAST = Limits(timeout=5)
# Only the reliability guard (the code runs as the caller, no kernel layer): what a
# non-root machine without Landlock or user namespaces would get.
GUARD_ONLY = dict(drop_privileges=False, landlock=False, seccomp=False, namespaces=False)


def wrap(code: str) -> str:
    return f"I will write it.\n</think>\n```python\n{code}\n```"


def _caller_state() -> dict:
    """What a sandbox run must never change in the process that calls it."""
    import resource
    import signal
    umask = os.umask(0o022)
    os.umask(umask)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {
        "rlimits": {name: resource.getrlimit(getattr(resource, name)) for name in dir(resource)
                    if name.startswith("RLIMIT_")},
        "ids": (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())),
        "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask, "session": (os.getpgrp(), os.getsid(0)),
        "signals": {int(sig): signal.getsignal(sig) for sig in (signal.SIGXFSZ, signal.SIGXCPU, signal.SIGPIPE)},
        "namespaces": {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "pid", "user", "mnt")},
        # Landlock and seccomp set no_new_privs and a filter on the process that applies them
        "kernel": {k: status.get(k, "").strip() for k in ("NoNewPrivs", "Seccomp", "Seccomp_filters")},
        "open_fds": len(os.listdir("/proc/self/fd")),
    }


def probe_layers() -> tuple[str, ...]:
    return run_program(Program("pass", tests=["assert True"]), FAST).isolation


# before this process runs any sandbox: a change that sticks after the first run shows here
CALLER_AT_START = _caller_state()
LAYERS = probe_layers()
LANDLOCK_ABI = max([int(n[len("landlock"):]) for n in LAYERS if n.startswith("landlock")] or [0])


def kernel_landlock_abi() -> int:
    """The kernel's own answer (not the sandbox's), so that a sandbox that stopped applying
    Landlock fails test_isolation_layers_in_force instead of skipping the Landlock tests."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1)))


def kernel_has_seccomp_filters() -> bool:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    in_status = "Seccomp_filters:" in Path("/proc/self/status").read_text()
    return libc.prctl(21, 0, 0, 0, 0) >= 0 and in_status and os.uname().machine in ("x86_64", "aarch64")


def leftover_processes(result: SandboxResult, wait: float = 3.0) -> list[str]:
    """Live processes in the sandbox's process group or session, or of its uid."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
                status = Path(f"/proc/{name}/status").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
            uid = int(status.split("Uid:")[1].split()[0])
            if state != "Z" and (pgrp == result.pid or session == result.pid
                                 or (result.uid is not None and uid == result.uid)):
                found.append(f"{name} {state} pgrp={pgrp} sid={session} uid={uid}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# ---------------------------------------------------------------------- extraction
def test_extract_code_takes_last_python_block_of_the_answer():
    c = ("<think>\n```python\ndef f(): return 'reasoning'\n```\n</think>\n"
         "First:\n```python\ndef f(): return 1\n```\nshell:\n```bash\nls\n```\n"
         "final:\n```py\ndef f(): return 2\n```\nthanks")
    assert extract_code(c) == "def f(): return 2"
    assert extract_code(wrap("x = 1")) == "x = 1"
    assert extract_code("reasoning only ```python\nx=1\n``` no close tag") is None       # no </think>: no answer
    assert extract_code("```python\nx=1\n```", started_in_reasoning=False) == "x=1"
    assert extract_code("```python\nx=1\n```", started_in_reasoning=None) == "x=1"
    assert extract_code("</think>\n```\nbare = 1\n```") == "bare = 1"
    assert extract_code("</think>\n```bash\nls\n```") is None
    assert extract_code("</think>\n```python\nunclosed = 1\n") is None                    # truncated
    assert extract_code("</think>\n```python\n\n```") is None                             # empty
    # the code's own indentation is kept (a HumanEval body block); an indented fence is un-indented
    assert extract_code("</think>\n```python\n    return 1\n```") == "    return 1"
    assert extract_code("</think>\n1. step\n   ```python\n   def f():\n       return 1\n   ```") == \
        "def f():\n    return 1"
    assert code_blocks("```Python3 title\na\n```") == [("python3", "a")]


def test_normalize_code_for_voting():
    assert normalize_code("def f(x):\n    # c\n    return x+1\n") == normalize_code("def f(x):  \n\n    return (x + 1)")
    assert normalize_code("def f(:") == "def f(:"
    assert normalize_code(None) is None


# ---------------------------------------------------------------------- sandbox basics
def test_run_program_counts_tests_separately():
    r = run_program(Program("def f(x):\n    return x + 1\nprint('hello')",
                            tests=["assert f(1) == 2", "assert f(2) == 4", "assert g(1)"]), FAST)
    assert (r.status, r.passed, r.total, r.tests) == ("failed", 1, 3, ("pass", "fail", "error"))
    assert r.passed_fraction == pytest.approx(1 / 3) and r.score == 0.0
    assert r.stdout == "hello\n" and "test 1 fail" in r.error
    ok = run_program(Program("def f(x):\n    return x + 1", tests=["assert f(1) == 2"]), FAST)
    assert ok.status == "passed" and ok.score == 1.0 and ok.passed_fraction == 1.0 and ok.error == ""


def test_program_errors_and_bindings():
    r = run_program(Program("def f(:\n  pass", tests=["assert True"]), FAST)
    assert r.status == "error" and "SyntaxError" in r.error and r.passed == 0
    r = run_program(Program("raise ValueError('boom')", tests=["assert True"]), FAST)
    assert r.status == "error" and "ValueError: boom" in r.error and "Traceback" in r.stderr
    r = run_program(Program("import sys\nsys.exit(0)", tests=["assert True"]), FAST)
    assert r.status == "error" and r.score == 0
    r = run_program(Program("def g(x):\n    return 2 * x", tests=["assert candidate(2) == 4"],
                            bindings={"candidate": "g"}), FAST)
    assert r.status == "passed"
    r = run_program(Program("def h(x):\n    return 2 * x", tests=["assert candidate(2) == 4"],
                            bindings={"candidate": "g"}), FAST)
    assert r.status == "failed" and "g is not defined" in r.error
    # setup runs in the test scope: it sees the program's names and cannot clobber them
    r = run_program(Program("x = 1\ndef f():\n    return x", setup="x = 5\ny = f()",
                            tests=["assert y == 1 and x == 5"]), FAST)
    assert r.status == "passed"
    # the standard library works (no site-packages); __name__ is not "__main__"
    r = run_program(Program(textwrap.dedent("""\
        import re, math, heapq, collections, itertools, functools, typing, random, json, string, bisect
        import hashlib, datetime, fractions, decimal, statistics, copy, operator, cmath, array, sys
        import tempfile, pathlib
        started = __name__ != "__main__"
        p = pathlib.Path("scratch.txt"); p.write_text("ok"); ok = p.read_text() == "ok"; p.unlink()
        with tempfile.TemporaryDirectory() as d: pass
        """), tests=["assert started and ok", "assert exit and quit"]), FAST)
    assert r.status == "passed", r


def test_hash_seed_is_fixed():
    # the hashes a fresh interpreter gives with PYTHONHASHSEED=0, against the sandbox's, on
    # the same interpreter: any other seed (or a random one) gives other values
    words = ["alpha", "beta", "gamma", "x", "y"]
    python = choose_interpreter(None, IS_ROOT)[0] or sys.executable
    ref = subprocess.run([python, "-S", "-c", f"print([hash(w) for w in {words!r}])"], capture_output=True,
                         text=True, env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"}, timeout=60).stdout
    prog = Program(f"print([hash(w) for w in {words!r}])", tests=["assert True"])
    runs = [run_program(prog, FAST) for _ in range(2)]
    assert all(r.status == "passed" for r in runs), runs
    assert ref.strip() and [r.stdout for r in runs] == [ref, ref]


def test_isolation_layers_in_force():
    print("isolation:", LAYERS, "kernel Landlock ABI:", kernel_landlock_abi())
    assert "guard" in LAYERS
    if IS_ROOT:
        assert {"uid", "netns", "pidns"} <= set(LAYERS), LAYERS
    # every layer the kernel offers is in force (otherwise the tests that need it would skip)
    assert LANDLOCK_ABI == kernel_landlock_abi(), LAYERS
    if kernel_has_seccomp_filters():
        assert "seccomp" in LAYERS, LAYERS


# ---------------------------------------------------------------------- hostile programs
def test_infinite_loop_is_stopped():
    t = time.monotonic()
    r = run_program(Program("while True:\n    pass", tests=["assert True"]), Limits(timeout=1))
    assert r.status == "timeout" and r.score == 0 and time.monotonic() - t < 1 + 4
    # a loop inside a test: the tests already done still count
    r = run_program(Program("def f():\n    while True: pass", tests=["assert True", "f()"]), Limits(timeout=1))
    assert (r.status, r.passed, r.total) == ("timeout", 1, 2)
    # a sleeping program (no CPU used) hits the wall-clock limit
    r = run_program(Program("import time\ntime.sleep(60)", tests=["assert True"]), Limits(timeout=1))
    assert r.status == "timeout" and r.wall_seconds < 5
    assert not leftover_processes(r)


def test_cpu_limit_kills_a_busy_program_even_with_a_long_wall_limit():
    r = run_program(Program("while True:\n    pass", tests=["assert True"]), Limits(timeout=30, cpu_seconds=1))
    assert r.status == "timeout" and "CPU" in r.error and r.wall_seconds < 15


FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_fork_bomb_is_blocked_by_the_guard():
    r = run_program(Program(FORK_BOMB.replace("except OSError", "except ValueError"), tests=["assert True"]),
                    Limits(timeout=2))
    assert r.status == "error" and "fork" in r.error
    assert not leftover_processes(r)


FORK_COUNTER = """
import os, time
n = 0
for _ in range(64):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
"""


@pytest.mark.skipif(not IS_ROOT, reason="RLIMIT_NPROC per sandbox needs a dedicated uid (root)")
def test_fork_bomb_without_the_guard_is_contained_and_cleaned_up():
    # the guard is off: os.fork is real; RLIMIT_NPROC of the fresh uid caps the bomb
    r = run_program(Program(FORK_COUNTER, tests=["assert n < 8", "assert n >= 3"]),
                    Limits(timeout=5, max_processes=8), guard=False)
    assert r.status == "passed", r
    assert r.wall_seconds < 20                       # the children sleeping 60 s did not hold it up
    assert not leftover_processes(r)
    t = time.monotonic()
    r = run_program(Program(FORK_BOMB, tests=["assert True"]), Limits(timeout=2, max_processes=8), guard=False)
    assert r.status == "timeout" and r.score == 0 and time.monotonic() - t < 8
    assert not leftover_processes(r), "fork bomb left processes behind"


@pytest.mark.skipif(not IS_ROOT, reason="needs root (a dedicated uid to find escaped processes)")
def test_processes_escaping_the_group_are_killed_without_pid_namespace():
    # no namespaces: a child that leaves the session survives killpg; the uid sweep gets it
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
    os._exit(0)
"""
    r = run_program(Program(code, tests=["assert True"]), Limits(timeout=5), guard=False, namespaces=False)
    assert r.status == "passed" and "pidns" not in r.isolation
    assert not leftover_processes(r)


def test_huge_allocation_is_a_memory_error():
    r = run_program(Program("x = bytearray(10**10)", tests=["assert True"]), FAST)
    assert r.status == "memory" and r.score == 0
    r = run_program(Program("def f():\n    return [0] * 10**10", tests=["assert True", "assert f()"]), FAST)
    assert (r.status, r.passed, r.tests) == ("memory", 1, ("pass", "memory"))
    r = run_program(Program("x = bytearray(200 * 2**20)", tests=["assert len(x) > 0"]),
                    Limits(timeout=5, memory_mb=128))
    assert r.status == "memory"
    r = run_program(Program("x = bytearray(200 * 2**20)", tests=["assert len(x) > 0"]), FAST)
    assert r.status == "passed"                      # well within the default 1 GiB


def _sentinel(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "precious"
    d.mkdir()
    f = d / "sentinel.txt"
    f.write_text("keep me")
    return d, f


DELETERS = {
    "os.remove": "os.remove(F)",
    "os.unlink": "os.unlink(F)",
    "posix.unlink": "import posix; posix.unlink(F)",
    "shutil.rmtree": "shutil.rmtree(D)",
    "shutil.move": "shutil.move(F, 'stolen.txt')",
    "pathlib.unlink": "pathlib.Path(F).unlink()",
    "pathlib.write_text": "pathlib.Path(F).write_text('gone')",
    "pathlib.rename": "pathlib.Path(F).rename(F + '.bak')",
    "open-w": "open(F, 'w').write('gone')",
    "open-a": "open(F, 'a').write('more')",
    "open-r+": "open(F, 'r+').write('XXXX')",
    "io.FileIO": "import io; io.FileIO(F, 'w').write(b'gone')",
    "os.open-trunc": "os.close(os.open(F, os.O_WRONLY | os.O_TRUNC))",
    "os.truncate": "os.truncate(F, 0)",
    "os.rename": "os.rename(F, F + '.bak')",
    "os.replace": "os.replace(F, F + '.bak')",
    "os.chmod": "os.chmod(D, 0)",
    "os.rmdir-after-unlink": "[os.unlink(os.path.join(D, n)) for n in os.listdir(D)]; os.rmdir(D)",
    "os.system": "assert os.system('rm -rf ' + D) == 0",
    "subprocess": "subprocess.run(['rm', '-rf', D], check=True)",
    "dir_fd": "fd = os.open(D, os.O_RDONLY); os.unlink('sentinel.txt', dir_fd=fd)",
    "symlink-then-write": "os.symlink(F, 'link'); open('link', 'w').write('gone')",
}
# Routes around a Python-level guard: only the kernel layers (uid, Landlock) stop these.
BYPASSES = {
    "ctypes-unlink": "import ctypes; assert ctypes.CDLL(None).unlink(F.encode()) == 0",
    "ctypes-chmod": "import ctypes; assert ctypes.CDLL(None).chmod(D.encode(), 0) == 0",
    "raw-FileIO": "import sys; type(sys.stdout.buffer.raw)(F, 'w').write(b'gone')",
}


def _deleter_program(d: Path, f: Path, attacks: dict) -> Program:
    """Every attack in turn; it prints the names of the refused ones (those that raised).
    The one test passes when any attack went through."""
    lines = [f"import os, shutil, subprocess, pathlib\nD, F = {str(d)!r}, {str(f)!r}\nerrors = {{}}\nsucceeded = []"]
    for name, stmt in attacks.items():
        lines.append(f"try:\n    {stmt}\n    succeeded.append({name!r})\n"
                     f"except BaseException as e:\n    errors[{name!r}] = repr(e)")
    lines.append("print(sorted(errors))")
    return Program("\n".join(lines), tests=["assert succeeded"])


def _assert_unharmed(d: Path, f: Path):
    assert f.read_text() == "keep me"
    assert sorted(p.name for p in d.iterdir()) == ["sentinel.txt"]
    assert d.stat().st_mode & 0o777 != 0


@pytest.mark.parametrize("layers", ["all", "guard-only", "kernel-only"])
def test_deleting_files_outside_the_sandbox_fails(tmp_path, layers):
    d, f = _sentinel(tmp_path)
    if layers == "all":
        opts, attacks = {}, {**DELETERS, **BYPASSES}
    elif layers == "guard-only":           # runs as the caller, no Landlock: the guard alone must hold
        opts, attacks = GUARD_ONLY, DELETERS
    else:                                   # no guard: uid and/or Landlock alone must hold
        if not IS_ROOT and not LANDLOCK_ABI:
            pytest.skip("neither a dedicated uid nor Landlock is available here")
        opts, attacks = dict(guard=False), {**DELETERS, **BYPASSES}
    r = run_program(_deleter_program(d, f, attacks), FAST, **opts)
    assert r.score == 0 and r.passed == 0, r
    _assert_unharmed(d, f)
    # every attack was refused (raised) inside the sandbox
    refused = eval(r.stdout.strip().splitlines()[-1])
    assert set(refused) == set(attacks), set(attacks) - set(refused)


@pytest.mark.skipif(not LANDLOCK_ABI or "seccomp" not in LAYERS, reason="needs Landlock and seccomp")
def test_landlock_and_seccomp_alone_protect_the_callers_files(tmp_path):
    # what a caller that is not root gets: the code runs under the caller's own uid (here
    # root, so file permissions do not help at all), no guard
    d, f = _sentinel(tmp_path)
    r = run_program(_deleter_program(d, f, {**DELETERS, **BYPASSES}), FAST, guard=False, drop_privileges=False,
                    namespaces=False)
    assert r.score == 0 and any(n.startswith("landlock") for n in r.isolation) and "uid" not in r.isolation
    _assert_unharmed(d, f)
    assert set(eval(r.stdout.strip().splitlines()[-1])) == set(DELETERS) | set(BYPASSES)


@pytest.mark.skipif(not IS_ROOT, reason="a dedicated uid needs root")
def test_dropped_uid_alone_protects_the_callers_files(tmp_path):
    d, f = _sentinel(tmp_path)
    r = run_program(_deleter_program(d, f, {**DELETERS, **BYPASSES}), FAST, guard=False, landlock=False,
                    seccomp=False, namespaces=False)
    assert r.score == 0 and "uid" in r.isolation and not any(n.startswith("landlock") for n in r.isolation)
    _assert_unharmed(d, f)


# ---------------------------------------------------------------------- reading the host
# Routes to a file's content; each one records what it read. Run with the guard off, the
# kernel (Landlock) alone must refuse every one of them.
READERS = {
    "open": "data = open(P).read()",
    "pathlib": "data = pathlib.Path(P).read_text()",
    "os.open": "data = os.read(os.open(P, os.O_RDONLY), 4096).decode()",
    "io.FileIO": "import io; data = io.FileIO(P).read().decode()",
    "linecache": "import linecache; data = linecache.getline(P, 1); assert data",
    "proc-root": "data = open('/proc/self/root' + P).read()",
    "O_PATH-reopen": "fd = os.open(P, os.O_PATH); data = open('/proc/self/fd/%d' % fd).read()",
    "dir_fd": "fd = os.open(os.path.dirname(P), os.O_RDONLY); "
              "data = os.read(os.open(os.path.basename(P), os.O_RDONLY, dir_fd=fd), 4096).decode()",
    "symlink": "os.symlink(P, 'link'); data = open('link').read()",
    "hardlink": "os.link(P, 'hard'); data = open('hard').read()",
    "shutil.copy": "shutil.copy(P, 'copied'); data = open('copied').read()",
    "listdir": "data = ' '.join(os.listdir(os.path.dirname(P))); assert data",
    "os.system": "assert os.system('cat ' + P) == 0; data = ''",
    "ctypes": "import ctypes; libc = ctypes.CDLL(None); fd = libc.open(P.encode(), 0); assert fd >= 0; "
              "data = os.read(fd, 4096).decode()",
}


def _reader_program(path: Path) -> Program:
    """Every reader on ``path``; prints what each one read (to stdout and stderr), then the
    names of the refused ones (those that raised)."""
    lines = [f"import os, pathlib, shutil, sys\nP = {str(path)!r}\nerrors = {{}}\ngot = []"]
    for name, stmt in READERS.items():
        lines.append(f"try:\n    {stmt}\n    got.append({name!r})\n    print(data); print(data, file=sys.stderr)\n"
                     f"except BaseException as e:\n    errors[{name!r}] = type(e).__name__")
    lines.append("print(repr(sorted(errors)))")
    return Program("\n".join(lines), tests=["assert not got"])


@pytest.fixture
def secrets_on_host(tmp_path):
    """Two world-readable secret files outside any sandbox folder: one in the system temp
    folder, one in a folder standing for a home folder (~/.config/token)."""
    token = "R1LAB-SECRET-" + os.urandom(8).hex()
    fd, name = tempfile.mkstemp(prefix="r1lab-test-secret-", dir=tempfile.gettempdir())
    os.write(fd, (token + "\n").encode())
    os.close(fd)
    in_tmp = Path(name)
    home_file = tmp_path / "home" / ".config" / "token"
    home_file.parent.mkdir(parents=True)
    home_file.write_text(token + "\n")
    for p in (in_tmp, home_file):
        os.chmod(p, 0o644)
    try:
        yield token, [in_tmp, home_file]
    finally:
        in_tmp.unlink()


def _leaks(r: SandboxResult, token: str) -> bool:
    return token in r.stdout or token in r.stderr or token in r.error or token in repr(r)


@pytest.mark.skipif(not kernel_landlock_abi(), reason="reads are restricted by Landlock, which this kernel lacks")
@pytest.mark.parametrize("layers", ["all", "landlock-only"])
def test_programs_cannot_read_host_files(secrets_on_host, layers):
    token, paths = secrets_on_host
    # landlock-only: no guard, the caller's own uid (root here: file permissions do not help)
    opts = {} if layers == "all" else dict(guard=False, drop_privileges=False, seccomp=False, namespaces=False)
    for path in paths:
        r = run_program(_reader_program(path), FAST, **opts)
        assert r.status == "passed", r                      # "assert not got": no reader read anything
        assert not _leaks(r, token), r
        refused = eval(r.stdout.strip().splitlines()[-1])
        assert set(refused) == set(READERS), set(READERS) - set(refused)
        if layers == "landlock-only":
            # the same program without Landlock reads the secret: the readers above are real
            r = run_program(_reader_program(path), FAST, **{**opts, "landlock": False})
            assert r.status == "failed" and _leaks(r, token), r


@pytest.mark.skipif(not kernel_landlock_abi(), reason="reads are restricted by Landlock, which this kernel lacks")
def test_listing_the_host_gets_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("private")
    venv = Path(sys.prefix)
    targets = ["/", "/etc", "/home", "/root", "/usr", "/proc", "/var", tempfile.gettempdir(), str(home), str(ROOT)]
    if venv != Path(sys.base_prefix):                        # a virtual environment (its site-packages)
        targets.append(str(Path(pytest.__file__).parent))
    code = textwrap.dedent(f"""\
        import os, glob, json
        refused, seen = {{}}, {{}}
        for d in {targets!r}:
            try:
                seen[d] = os.listdir(d)
            except OSError as e:
                refused[d] = type(e).__name__
            if glob.glob(os.path.join(d, "*")):
                seen.setdefault(d, "glob")
        import json as stdlib_module                       # the standard library stays readable
        own = open(stdlib_module.__file__).read(100)
        open("mine.txt", "w").write("x")
        print(json.dumps({{"refused": refused, "seen": seen, "own": sorted(os.listdir("."))}}))
        """)
    opts = dict(guard=False, drop_privileges=False)
    r = run_program(Program(code, tests=["assert not seen"]), FAST, **opts)
    assert r.status == "passed", r
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(out["refused"]) == sorted(targets) and set(out["refused"].values()) == {"PermissionError"}, out
    assert out["own"] == ["mine.txt"]
    assert "notes.txt" not in r.stdout
    # without Landlock the same program lists them
    r = run_program(Program(code, tests=["assert not seen"]), FAST, **opts, landlock=False)
    assert r.status == "failed" and "notes.txt" in r.stdout, r


def test_read_allow_list_is_narrow():
    """What the sandbox may read: the interpreter's own files and the library folders, never
    / or a top-level folder, the checkout, the home or temp folder, or a virtual environment."""
    private = [ROOT.resolve()]                               # no folder inside them either
    if sys.prefix != sys.base_prefix:
        private.append(Path(sys.prefix).resolve())
    keep = [*private, Path.home().resolve(), Path(tempfile.gettempdir()).resolve()]
    for python in {choose_interpreter(None, IS_ROOT)[0] or sys.executable, sys.executable}:
        paths = [Path(p) for p in read_allow_list(python)]
        print(python, [str(p) for p in paths])
        for p in paths:
            assert p.is_absolute() and p.exists(), p
            assert p.parent != Path("/") or str(p) in ("/lib", "/lib64"), p
            for k in keep:
                assert not (k == p or p in k.parents), (p, k)
            for k in private:
                assert not (p.is_dir() and k in p.parents), (p, k)
        stdlib = subprocess.run([python, "-S", "-c", "import os; print(os.path.dirname(os.__file__))"],
                                capture_output=True, text=True, timeout=60).stdout.strip()
        assert any(Path(stdlib) == p or p in Path(stdlib).parents for p in paths), (stdlib, paths)


STDLIB_PROGRAM = textwrap.dedent("""\
    import math, re, collections, itertools, json, heapq, functools, fractions, decimal, random, datetime, string
    import bisect, statistics, hashlib, array, operator, typing, copy, dataclasses, enum, struct, zlib, unicodedata
    import bz2, lzma, sqlite3                # extension modules that load a shared library on import

    def primes(n):
        return [p for p in range(2, n) if all(p % d for d in range(2, math.isqrt(p) + 1))]

    def words(text):
        return collections.Counter(re.findall(r"[a-z]+", text.lower())).most_common(2)

    def k_smallest(xs, k):
        return heapq.nsmallest(k, xs)

    @functools.lru_cache(maxsize=None)
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    r = random.Random(0)
    sample = [r.randint(0, 9) for _ in range(5)]
    """)
STDLIB_TESTS = [
    "assert primes(20) == [2, 3, 5, 7, 11, 13, 17, 19]",
    "assert words('a b a c b a') == [('a', 3), ('b', 2)]",
    "assert k_smallest([5, 1, 4, 2], 2) == [1, 2]",
    "assert fib(80) == 23416728348467685",
    "assert list(itertools.accumulate([1, 2, 3])) == [1, 3, 6]",
    "assert json.loads(json.dumps({'a': [1, 2]})) == {'a': [1, 2]}",
    "assert fractions.Fraction(1, 3) + fractions.Fraction(1, 6) == fractions.Fraction(1, 2)",
    "assert str(decimal.Decimal(1) / decimal.Decimal(8)) == '0.125'",
    "assert len(sample) == 5 and all(0 <= x <= 9 for x in sample)",
    "assert datetime.date(2024, 3, 1) - datetime.timedelta(days=1) == datetime.date(2024, 2, 29)",
    "assert string.ascii_lowercase[:3] == 'abc' and string.Template('$x!').substitute(x='hi') == 'hi!'",
    "assert statistics.median([3, 1, 2]) == 2 and bisect.bisect([1, 3, 5], 4) == 2",
    "assert hashlib.sha256(b'abc').hexdigest().startswith('ba7816bf')",
    "assert zlib.decompress(zlib.compress(b'x' * 100)) == b'x' * 100 and unicodedata.name('a') == 'LATIN SMALL LETTER A'",
    "assert lzma.decompress(lzma.compress(b'ab' * 50)) == b'ab' * 50 and bz2.decompress(bz2.compress(b'c')) == b'c'",
    "assert sqlite3.connect(':memory:').execute('select 6 * 7').fetchone() == (42,)",
]


@pytest.mark.parametrize("interpreter", ["default", "caller"])
def test_normal_programs_work_with_reads_restricted(interpreter):
    # default: what the code reward uses (a world-readable interpreter and a fresh uid for a
    # root caller); caller: this process's interpreter (a venv or pyenv one) under its own uid
    opts = {} if interpreter == "default" else dict(python=sys.executable, drop_privileges=False)
    r = run_program(Program(STDLIB_PROGRAM, tests=STDLIB_TESTS), FAST, **opts)
    assert r.status == "passed" and r.passed == len(STDLIB_TESTS), r
    if kernel_landlock_abi():
        assert any(n.startswith("landlock") for n in r.isolation), r.isolation


def _listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    return srv


def _no_connection(srv) -> bool:
    try:
        conn, _ = srv.accept()
    except (socket.timeout, TimeoutError):
        return True
    conn.close()
    return False


NET_ATTACK = """
import socket
connected = False
for attempt in ("create_connection", "socket", "socketpair-bypass"):
    try:
        if attempt == "create_connection":
            s = socket.create_connection(("127.0.0.1", PORT), timeout=2)
        elif attempt == "socket":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(("127.0.0.1", PORT))
        else:
            real = socket.socket.__mro__[-2]          # the C socket class under the guard's wrapper
            s = real(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(("127.0.0.1", PORT))
        s.sendall(b"exfiltrated")
        connected = True
    except BaseException as e:
        print(attempt, repr(e))
"""


@pytest.mark.parametrize("layers", ["all", "guard-only", "kernel-only"])
def test_sockets_cannot_connect(layers):
    opts = {"all": {}, "guard-only": GUARD_ONLY, "kernel-only": dict(guard=False)}[layers]
    if layers == "kernel-only" and "netns" not in LAYERS and LANDLOCK_ABI < 4:
        pytest.skip("no network namespace and no Landlock network rules here")
    srv = _listener()
    try:
        port = srv.getsockname()[1]
        code = NET_ATTACK.replace("PORT", str(port))
        if layers == "guard-only":                    # the bypass would work without kernel layers
            code = code.replace('"socketpair-bypass"', "")
        r = run_program(Program(code, tests=["assert connected"]), FAST, **opts)
        assert r.score == 0 and r.tests == ("fail",), r
        assert _no_connection(srv), "a connection reached the caller's listening socket"
    finally:
        srv.close()


def test_exit_before_the_asserts_scores_zero():
    r = run_program(Program("import os\nos._exit(0)", tests=["assert True"]), FAST)
    assert r.status == "error" and r.score == 0 and r.passed == 0 and "before the tests finished" in r.error
    # inside a test: the earlier tests passed but the run never finished
    r = run_program(Program("import os\ndef f():\n    os._exit(0)", tests=["assert True", "f()", "assert True"]), FAST)
    assert r.status == "error" and r.score == 0 and r.tests == ("pass", "", "")
    # forged result lines on every descriptor, without the run's nonce, change nothing
    forge = ("import os\nfor fd in range(3, 40):\n    try:\n"
             "        os.write(fd, b'done\\ntest 0 pass\\nx test 0 pass\\nx done\\n')\n"
             "    except OSError:\n        pass\nos._exit(0)")
    r = run_program(Program(forge, tests=["assert True"]), FAST)
    assert r.status == "error" and r.passed == 0
    # a forked child (guard off) running on through the harness cannot report
    r = run_program(Program("import os\nif os.fork() == 0:\n    pass\nelse:\n    os.wait()\n    os._exit(0)",
                            tests=["assert True"]), FAST, guard=False)
    assert r.status == "error" and r.passed == 0


def test_hundred_megabytes_of_output_is_truncated():
    code = "import sys\nsys.stdout.write('x' * 100_000_000)\nsys.stderr.write('e' * 10_000_000 + 'END')"
    tracemalloc.start()
    try:
        r = run_program(Program(code, tests=["assert False"]), Limits(timeout=20, max_output_bytes=4096))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.score == 0 and r.status == "failed" and r.truncated
    assert len(r.stdout) == 4096 and set(r.stdout) == {"x"} and r.stderr.endswith("END") and len(r.stderr) == 4096
    assert peak < 16 * 2**20, f"the caller's Python memory peaked at {peak / 2**20:.1f} MB"
    # output does not make a correct program fail
    r = run_program(Program("print('y' * 5_000_000)\ndef f():\n    return 1", tests=["assert f() == 1"]), FAST)
    assert r.status == "passed" and r.truncated and len(r.stdout) == Limits().max_output_bytes


def test_huge_file_is_stopped_by_the_file_size_limit():
    code = textwrap.dedent("""\
        import os
        print(os.getcwd())
        written = 0
        with open("big.bin", "wb") as f:
            chunk = b"0" * 2**20
            for _ in range(200):
                f.write(chunk)
                f.flush()
                written += len(chunk)
        """)
    r = run_program(Program(code, tests=["assert True"]), Limits(timeout=10, max_file_mb=8))
    assert r.score == 0 and r.status == "error" and "File too large" in r.error, r
    cwd = Path(r.stdout.strip().splitlines()[0])
    assert cwd.name.startswith("r1lab-sandbox-") and cwd.parent == Path(tempfile.gettempdir()).resolve(), cwd
    assert not os.path.exists(cwd), "the sandbox directory was not removed"


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("R1LAB_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    code = "import os, sys\nenv = dict(os.environ)\ncwd = os.getcwd()\npath = list(sys.path)"
    r = run_program(Program(code + "\nprint(sorted(env))", tests=[
        "assert 'R1LAB_SECRET_TOKEN' not in env and 'PYTHONPATH' not in env",
        "assert env['HOME'] == cwd and env['TMPDIR'] == cwd",
        "assert not any('site-packages' in p for p in path) and '/somewhere' not in path",
        "import sys; assert sys.stdin.read() == ''",
    ]), FAST)
    assert r.status == "passed", r


def test_many_programs_in_a_thread_pool():
    good = Program("def f(x):\n    return x * 2", tests=["assert f(2) == 4"])
    bad = Program("def f(x):\n    return x", tests=["assert f(2) == 4"])
    loop = Program("while True: pass", tests=["assert True"])
    progs = [good, bad, loop, good, Program("import os\nos._exit(0)"), good, bad, good] * 2
    t = time.monotonic()
    rs = run_many(progs, Limits(timeout=2), max_workers=4)
    assert [r.status for r in rs] == ["passed", "failed", "timeout", "passed", "error", "passed", "failed",
                                      "passed"] * 2
    assert time.monotonic() - t < 30
    assert len({r.pid for r in rs}) == len(rs)
    if IS_ROOT:
        assert len({r.uid for r in rs}) == len(rs)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to create an unprivileged caller")
def test_unprivileged_caller(tmp_path):
    """The sandbox used by a non-root caller (no uid to drop): the guard, Landlock and, where
    the kernel allows unprivileged user namespaces, netns/pidns; RLIMIT_NPROC is set relative
    to the caller's own process count. The caller's own files are the ones at risk here."""
    from r1lab.rewards.sandbox.interpreter import choose_interpreter
    python = choose_interpreter(None, True)[0]
    if not python:
        pytest.skip("no interpreter readable by another uid")
    uid = 0x5F000000 + os.getpid() % 100000
    # the demoted caller's home and a copy of the sandbox it can read whatever the checkout's
    # permissions (CI clones into a 0700 temp dir), in a folder of /tmp that every uid can
    # reach (tmp_path's parents are 0700: files there would be out of its reach anyway)
    base = Path(tempfile.mkdtemp(prefix="r1lab-test-caller-", dir="/tmp"))
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir()
    d, f = _sentinel(home)
    token = "R1LAB-SECRET-" + os.urandom(8).hex()
    secret = home / "secret-token"
    secret.write_text(token)
    os.chmod(secret, 0o600)                                  # the caller's own file, readable only by it
    for p in (tmp_path, home, d, f, secret):
        os.chown(p, uid, uid)
    os.chmod(tmp_path, 0o755)
    lib = base / "lib"
    lib.mkdir()
    copy = lib / "sandbox_under_test"
    shutil.copytree(SANDBOX_PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for p in (lib, copy, *copy.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    srv = _listener()
    script = textwrap.dedent(f"""\
        import json, os, sys
        sys.path.insert(0, {str(lib)!r})
        import sandbox_under_test as sb
        out = {{"reach": [os.access(sys.argv[6], os.W_OK | os.X_OK), len(open(sys.argv[7]).read())]}}
        r = sb.run_program(sb.Program(sys.argv[1], tests=["assert succeeded"]), sb.Limits(timeout=5), guard=False)
        out["delete"] = [r.status, list(r.isolation)]
        r = sb.run_program(sb.Program(sys.argv[2], tests=["assert connected"]), sb.Limits(timeout=5), guard=False)
        out["net"] = [r.status, r.stdout]
        r = sb.run_program(sb.Program(sys.argv[3], tests=["assert True"]), sb.Limits(timeout=2, max_processes=8),
                           guard=False)
        out["bomb"] = [r.status, r.pid]
        r = sb.run_program(sb.Program(sys.argv[4], tests=["assert n < 8", "assert n >= 3"]),
                           sb.Limits(timeout=5, max_processes=8), guard=False)
        out["nproc"] = [r.status, r.error, r.pid]
        r = sb.run_program(sb.Program(sys.argv[4], tests=["assert n <= 8", "assert n >= 3"]),
                           sb.Limits(timeout=5, max_processes=8), guard=False, namespaces=False)
        out["nproc-no-namespaces"] = [r.status, r.error, r.pid, list(r.isolation)]
        r = sb.run_program(sb.Program(sys.argv[5], tests=["assert not got"]), sb.Limits(timeout=5), guard=False)
        out["read"] = [r.status, r.stdout + r.stderr + r.error, list(r.isolation)]
        r = sb.run_program(sb.Program(sys.argv[5], tests=["assert not got"]), sb.Limits(timeout=5), guard=False,
                           landlock=False)
        out["read-without-landlock"] = [r.status, r.stdout + r.stderr + r.error]
        r = sb.run_program(sb.Program("def f():\\n    return 1", tests=["assert f() == 1"]), sb.Limits(timeout=5))
        out["after"] = r.status
        print(json.dumps(out))
        """)
    deleter = _deleter_program(d, f, {**DELETERS, **BYPASSES}).code
    net = NET_ATTACK.replace("PORT", str(srv.getsockname()[1]))

    def demote():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    try:
        reader = _reader_program(secret).code
        proc = subprocess.run([python, "-S", "-c", script, deleter, net, FORK_BOMB, FORK_COUNTER, reader, d, secret],
                              capture_output=True, text=True,
                              timeout=120, preexec_fn=demote, cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        print("unprivileged caller:", out)
        assert out["reach"] == [True, len(token)]           # the files are its own: only the sandbox stops it
        assert out["delete"][0] == "failed"
        _assert_unharmed(d, f)
        assert out["net"][0] == "failed" and _no_connection(srv)
        assert out["bomb"][0] == "timeout"
        assert out["nproc"][0] == "passed", out["nproc"]
        assert not leftover_processes(SandboxResult("passed", 0, 1, pid=out["nproc"][2]))
        assert out["nproc-no-namespaces"][0] == "passed", out["nproc-no-namespaces"]
        assert not leftover_processes(SandboxResult("passed", 0, 1, pid=out["nproc-no-namespaces"][2]))
        assert out["after"] == "passed"
        if kernel_landlock_abi():                            # the caller's own secret stays unread
            assert out["read"][0] == "passed" and token not in out["read"][1], out["read"]
        assert token in out["read-without-landlock"][1]      # which it is not without Landlock
        bomb = SandboxResult("timeout", 0, 1, pid=out["bomb"][1])
        assert not leftover_processes(bomb)
        assert not leftover_processes(SandboxResult("timeout", 0, 1, uid=uid))
    finally:
        srv.close()
        subprocess.run(["pkill", "-KILL", "-U", str(uid)], check=False)   # only that test uid, if anything is left
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------- missing layers: warned once, or refused
# Each simulates a kernel without the layer by changing the child's system call to one the
# kernel does not know (ENOSYS) or an option it rejects (EINVAL), as such a kernel answers.
MISSING_LAYER = {
    "landlock": ("abi = sc(L(_LL_SYS_CREATE_RULESET), None, L(0), L(1))",
                 "abi = sc(L(_LL_SYS_CREATE_RULESET + 100000), None, L(0), L(1))", "ENOSYS"),
    "seccomp": ("if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:",
                "if libc.prctl(22 + 100000, 2, ctypes.byref(fprog), 0, 0) != 0:", "EINVAL"),
}


@pytest.fixture
def without_layer(monkeypatch, caplog):
    def simulate(layer):
        old, new, _ = MISSING_LAYER[layer]
        assert sandbox_runner._HARNESS.count(old) == 1
        monkeypatch.setattr(sandbox_runner, "_HARNESS", sandbox_runner._HARNESS.replace(old, new))
        monkeypatch.setattr(sandbox_runner, "_warned", set())      # a fresh process, as far as warnings go
        caplog.set_level("WARNING", logger="r1lab.rewards.sandbox")
        return caplog
    return simulate


def _layer_attack(layer: str, tmp_path: Path) -> tuple[Program, callable]:
    """A program that only the missing layer would stop (the guard is off and the code runs
    as the caller), and a check of whether it got through: Landlock stops writing a file
    outside the sandbox folder, seccomp stops chmod of the caller's file."""
    victim = tmp_path / "victim"
    victim.write_text("x")
    os.chmod(victim, 0o644)
    if layer == "landlock":
        code = f"open({str(victim)!r}, 'w').write('changed')"
        return Program(f"try:\n    {code}\nexcept OSError:\n    pass", tests=["assert True"]), \
            lambda: victim.read_text() == "changed"
    code = f"import os; os.chmod({str(victim)!r}, 0o600)"
    return Program(f"try:\n    {code}\nexcept OSError:\n    pass", tests=["assert True"]), \
        lambda: victim.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("layer", ["landlock", "seccomp"])
def test_missing_layer_is_warned_once(without_layer, tmp_path, layer):
    prog, got_through = _layer_attack(layer, tmp_path)
    opts = dict(guard=False, drop_privileges=False)
    r = run_program(prog, FAST, **opts)                      # the layer in force: the attack is stopped
    assert r.status == "passed" and not got_through(), r
    caplog = without_layer(layer)
    results = [run_program(prog, FAST, **opts) for _ in range(3)]
    assert all(r.status == "passed" for r in results), results
    assert got_through()                                     # less isolation, really
    assert all(not any(n.startswith(layer) for n in r.isolation) for r in results)
    assert MISSING_LAYER[layer][2] in dict(results[0].missing_layers)[layer], results[0].missing_layers
    warnings = [rec for rec in caplog.records if rec.name == "r1lab.rewards.sandbox"]
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    msg = warnings[0].getMessage()
    assert warnings[0].levelname == "WARNING" and "\n" not in msg
    assert f"{layer} is not in force" in msg and MISSING_LAYER[layer][2] in msg
    assert "require: [landlock, seccomp]" in msg


@pytest.mark.parametrize("layer", ["landlock", "seccomp"])
def test_require_refuses_to_run_without_the_layer(without_layer, tmp_path, layer):
    prog, got_through = _layer_attack(layer, tmp_path)
    caplog = without_layer(layer)
    with pytest.raises(SandboxError, match=f"required isolation missing: {layer} .*{MISSING_LAYER[layer][2]}"):
        run_program(prog, FAST, guard=False, drop_privileges=False, require=["landlock", "seccomp"])
    assert not got_through()                                 # no user code ran
    # the code reward and the task: a one-line RewardError, not a zero reward
    from r1lab.rewards import RewardError
    ex = MBPP().load("prompt")[0]
    comp = wrap(ex.meta["code"])
    assert code_reward([comp], [ex], timeout=5) == [1.0]      # without require: runs, with a warning
    with pytest.raises(RewardError, match=f"code reward: .*required isolation missing: {layer}") as info:
        code_reward([comp], [ex], timeout=5, require=[layer])
    assert "\n" not in str(info.value)
    with pytest.raises(RewardError, match=f"required isolation missing: {layer}"):
        MBPP(require=f"{layer}").score([comp], [ex])
    assert len([r for r in caplog.records if r.name == "r1lab.rewards.sandbox"]) == 1


def test_require_option_is_checked():
    from r1lab.rewards import CombinedReward, RewardError
    ok = Program("def f():\n    return 1", tests=["assert f() == 1"])
    available = [n for n in ("landlock", "seccomp", "netns", "pidns", "uid")
                 if any(x.startswith(n) for x in LAYERS)]
    assert run_program(ok, FAST, require=available).status == "passed"
    assert run_program(ok, FAST, require=",".join(available)).status == "passed"
    with pytest.raises(SandboxError, match="unknown isolation layer.*'landlok'.*choose from landlock"):
        run_program(ok, FAST, require=["landlok"])
    with pytest.raises(SandboxError, match="require must be a list"):
        run_program(ok, FAST, require=[1])
    with pytest.raises(SandboxError, match="landlock but that layer is switched off"):
        run_program(ok, FAST, landlock=False, require=["landlock"])
    ex = MBPP().load("prompt")[0]
    with pytest.raises(RewardError, match="^code reward: require: unknown isolation layer"):
        code_reward([wrap(ex.meta["code"])], [ex], require=["selinux"])
    with pytest.raises(TaskError, match="^mbpp: require: unknown isolation layer"):
        MBPP(require=["selinux"])
    with pytest.raises(TaskError, match="^humaneval: require: unknown"):
        get_task("humaneval", require="landlock,apparmor")
    total, _ = CombinedReward({"code": {"options": {"require": available}}})([wrap(ex.meta["code"])], [ex])
    assert total == [1.0]


# ---------------------------------------------------------------------- the code reward reads example dicts
def test_code_reward_reads_gold_from_example_dicts():
    from r1lab.rewards import CombinedReward, RewardError
    humaneval_gold = {"format": "humaneval", "entry_point": "add",
                      "prompt": 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
                      "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 0) == 2\n"}
    mbpp_gold = {"format": "mbpp", "test_setup_code": "", "challenge_test_list": [],
                 "test_list": ["assert is_even(4) is True", "assert is_even(3) is False"]}
    examples = [{"question": "Write add.", "gold": humaneval_gold}] * 2 + [{"question": "Write is_even.",
                                                                           "gold": mbpp_gold}] * 2
    completions = [wrap("def add(a, b):\n    return a + b"), wrap("def add(a, b):\n    return a - b"),
                   wrap("def is_even(n):\n    return n % 2 == 0"), wrap("def is_even(n):\n    return n % 2 == 1")]
    assert code_reward(completions, examples) == [1.0, 0.0, 1.0, 0.0]
    # the same as Example objects, as bare gold dicts and with the gold as JSON text
    as_examples = [Example("t", e["question"], e["gold"]) for e in examples]
    assert code_reward(completions, as_examples) == [1.0, 0.0, 1.0, 0.0]
    assert code_reward(completions, [e["gold"] for e in examples]) == [1.0, 0.0, 1.0, 0.0]
    as_text = [{"question": e["question"], "gold": json.dumps(e["gold"])} for e in examples]
    assert code_reward(completions, as_text) == [1.0, 0.0, 1.0, 0.0]
    details = code_details(completions[:2], examples[:2])
    assert [(r.passed, r.total) for r in details] == [(2, 2), (1, 2)]     # a - b is right for (2, 0)
    # real benchmark examples, as dicts, with their reference solutions
    he, mb = HumanEval().load()[0], MBPP().load()[0]
    real = [{"question": he.question, "gold": he.gold}, {"question": mb.question, "gold": mb.gold}]
    refs = [wrap(he.gold["prompt"] + he.meta["canonical_solution"]), wrap(mb.meta["code"])]
    assert code_reward(refs, real) == [1.0, 1.0]
    assert code_reward(refs[::-1], real) == [0.0, 0.0]
    total, per = CombinedReward(["code"])(refs, real)
    assert total == [1.0, 1.0]
    with pytest.raises(RewardError, match="has a 'question' but no 'gold'"):
        code_reward(refs[:1], [{"question": he.question}])
    with pytest.raises(RewardError, match="gold is text but not JSON"):
        code_reward(refs[:1], [{"question": he.question, "gold": "def check(c): pass"}])
    with pytest.raises(RewardError, match="gold must be a dict of tests, got list"):
        code_reward(refs[:1], [{"question": he.question, "gold": [1, 2]}])


# ---------------------------------------------------------------------- HumanEval specifics
def test_humaneval_program_assembly():
    prompt = ('from typing import List\n\ndef helper(x):\n    return x\n\n'
              'def add(a: List[int]) -> int:\n    """Sum."""\n')
    body = "    return sum(helper(x) for x in a)"
    full = "def add(a):\n    return sum(helper(x) for x in a)"
    assert humaneval_source(body, prompt, "add") == prompt + body + "\n"          # continuation
    src = humaneval_source(full, prompt, "add")                                   # whole function
    assert src.startswith(prompt.rstrip("\n")) and src.endswith(full + "\n")
    gold = {"format": "humaneval", "prompt": prompt, "entry_point": "add",
            "test": "METADATA = {}\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n"
                    "    assert True, 'filler'\n    import math\n    assert candidate([]) == 0\n"}
    for code in (body, full):
        r = code_details([wrap(code)], [Example("t", "q", gold)])[0]
        assert (r.status, r.passed, r.total) == ("passed", 2, 2), r


def test_check_splitting():
    tests, param = split_check("def check(candidate):\n    import math\n    x = 2\n    assert candidate(x) == 4\n"
                               "    for i in range(3):\n        assert candidate(i) == 2 * i\n    print('end')\n")
    assert param == "candidate" and len(tests) == 2
    assert tests[0] == "import math\nx = 2\nassert candidate(x) == 4"
    assert tests[1].endswith("print('end')")
    assert split_check("def check(c):\n    return\n") is None
    assert split_check("x = 1") is None


def test_partial_credit_is_recorded():
    ex = HumanEval().load()[0]                        # has_close_elements: 7 asserts
    wrong = ex.gold["prompt"] + "    return False\n"  # right only when no pair is close
    r = code_details([wrap(wrong)], [ex])[0]
    assert r.status == "failed" and 0 < r.passed < r.total == 7
    assert code_reward([wrap(wrong)], [ex]) == [0.0]


# ---------------------------------------------------------------------- tasks
@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared data folder beside the checkout")
def test_packaged_copies_are_the_shared_files():
    assert HUMANEVAL_FILE.read_bytes() == (SHARED / "humaneval.jsonl").read_bytes()
    assert MBPP_FILE.read_bytes() == (SHARED / "mbpp.jsonl").read_bytes()


def test_tasks_are_registered_and_packaged():
    assert TASKS["humaneval"] is HumanEval and TASKS["mbpp"] is MBPP and REWARDS["code"] is code_reward
    he = HumanEval()
    assert he.kind == "code" and he.splits == ("test",) and len(he.load()) == 164
    with pytest.raises(TaskError):
        he.load("train")
    mb = MBPP()
    sizes = {s: len(mb.load(s)) for s in mb.splits}
    assert sizes == {"test": 500, "validation": 90, "train": 374, "prompt": 10}
    for split, (lo, hi) in MBPP_SPLITS.items():
        assert {e.meta["task_id"] for e in mb.load(split)} == set(range(lo, hi + 1))
    assert mb.load()[0].id == "mbpp/11"


def test_prompts():
    he, mb = HumanEval().load()[2], MBPP().load()[0]
    for ex, must in ((he, ("```python", "def truncate_number", "`truncate_number`")),
                     (mb, ("```python", mb.gold["test_list"][0], mb.meta["text"]))):
        for task in (HumanEval(), MBPP()):
            chat = task.prompt(ex, "chat")
            assert chat == [{"role": "user", "content": ex.question}]
            assert task.prompt(ex, "plain") == ex.question
            assert ex.question in task.prompt(ex, "r1_zero") and "Assistant:" in task.prompt(ex, "r1_zero")
        assert all(m in ex.question for m in must), ex.question
        assert mb.gold["test_list"][1] not in mb.question
    with pytest.raises(TaskError):
        HumanEval().prompt(he, "fancy")


def test_task_score_and_answer_key():
    task = HumanEval()
    ex = task.load()[0]
    good = ex.gold["prompt"] + ex.meta["canonical_solution"]
    comps = [wrap(good), wrap("def has_close_elements(n, t):\n    return None"), "no code at all", good]
    assert task.score(comps, [ex] * 4) == [1.0, 0.0, 0.0, 0.0]   # bare text without a fence has no code block
    d = task.details(comps, [ex] * 4)
    assert d[2].status == "error" and d[2].total == 7 and "no ```python" in d[2].error
    bare = ["```python\n" + good + "\n```"]                 # no think tags
    assert task.score(bare, [ex]) == [0.0]                   # chat: the prompt opened <think>, never closed
    assert task.score(bare, [ex], style="plain") == [1.0]    # plain/r1_zero: all answer
    assert HumanEval(style="r1_zero").score(["<think>\n```python\nx = 1\n```\n</think>" + bare[0]], [ex]) == [1.0]
    assert get_task("humaneval", style="plain").score(bare, [ex]) == [1.0]
    with pytest.raises(TaskError):
        HumanEval(style="fancy")
    k1 = task.answer_key(wrap(good), ex)
    assert k1 == task.answer_key(wrap(good.replace("\n\n", "\n") + "\n# done"), ex) and k1 is not None
    assert task.answer_key("nothing", ex) is None
    mb = MBPP(challenge_tests=True)
    assert mb.reward_options["challenge_tests"] is True


def test_path_override_and_malformed_files(tmp_path):
    src = MBPP_FILE.read_text().splitlines()
    p = tmp_path / "mbpp.jsonl"
    p.write_text("\n".join(src[10:13]) + "\n")
    assert [e.id for e in MBPP(path=p).load()] == ["mbpp/11", "mbpp/12", "mbpp/13"]
    p.write_text(src[10] + "\n{not json\n")
    with pytest.raises(TaskError, match="line 2"):
        MBPP(path=p).load()
    p.write_text(src[10] + "\n" + json.dumps({"task_id": 12, "text": "t"}) + "\n")
    with pytest.raises(TaskError, match="line 2.*test_list"):
        MBPP(path=p).load()
    h = tmp_path / "he.jsonl"
    h.write_text(HUMANEVAL_FILE.read_text().splitlines()[0] + "\n[1, 2]\n")
    with pytest.raises(TaskError, match="line 2"):
        HumanEval(path=h).load()
    with pytest.raises(TaskError, match="cannot read"):
        HumanEval(path=tmp_path / "missing.jsonl").load()


def test_reward_options():
    from r1lab.rewards import CombinedReward, RewardError
    ex = MBPP().load("prompt")[0]
    comp = wrap(ex.meta["code"])
    assert code_reward([comp], [ex], timeout=5, memory_mb=512, max_workers=1) == [1.0]
    with pytest.raises(RewardError):
        code_reward([comp], [ex], timeout=0)
    with pytest.raises(RewardError):
        code_reward([comp, comp], [ex])
    total, per = CombinedReward({"code": {"weight": 2.0, "options": {"timeout": 5}}})([comp], [ex], num_tokens=[3])
    assert total == [2.0] and per == {"code": [1.0]}


# ---------------------------------------------------------------------- acceptance: every reference solution
def test_every_reference_solution_scores_one():
    t = time.monotonic()
    he = HumanEval().load()
    mb = MBPP(challenge_tests=True)
    mbpp = [e for s in mb.splits for e in mb.load(s)]
    assert len(he) == 164 and len(mbpp) == 974
    comps = [wrap(e.gold["prompt"] + e.meta["canonical_solution"]) for e in he]
    comps += [wrap(e.meta["code"]) for e in mbpp]
    # generous timeout: mbpp/123's reference takes several CPU seconds and the machine is shared
    results = code_details(comps, he + mbpp, timeout=60, max_workers=4, challenge_tests=True)
    failures = [(e.id, r.status, r.error) for e, r in zip(he + mbpp, results) if r.score != 1.0]
    assert not failures, failures[:10]
    assert sum(r.total for r in results[:164]) >= 1000          # the check() asserts were split
    with_challenge = [r for e, r in zip(mbpp, results[164:]) if e.gold["challenge_test_list"]]
    assert len(with_challenge) == 11 and all(r.total > 3 for r in with_challenge)
    print(f"1138 reference solutions in {time.monotonic() - t:.1f} s")


def test_humaneval_body_only_completions_score_one():
    # the classic HumanEval form: the block is just the body that continues the prompt
    he = HumanEval().load()
    comps = [wrap(e.meta["canonical_solution"].rstrip()) for e in he]
    assert all(not e.meta["canonical_solution"].startswith("def") for e in he[:5])
    results = code_details(comps, he, timeout=30, max_workers=4)
    failures = [(e.id, r.status, r.error) for e, r in zip(he, results) if r.score != 1.0]
    assert not failures, failures[:10]


def test_unsplit_check_agrees_with_split_check():
    he = HumanEval().load()[:20]
    progs = []
    for e in he:
        src = build_program(e.gold["prompt"] + e.meta["canonical_solution"], e.gold).code
        progs.append(Program(src, tests=[f"check({e.gold['entry_point']})"], setup=e.gold["test"]))
        progs.append(Program(src.replace("return", "return None and ", 1), tests=[f"check({e.gold['entry_point']})"],
                             setup=e.gold["test"]))
    unsplit = run_many(progs, Limits(timeout=30), max_workers=4)
    split = code_details([wrap(p.code) for p in progs], [e for e in he for _ in (0, 1)], timeout=30, max_workers=4)
    assert [r.status == "passed" for r in unsplit] == [r.status == "passed" for r in split]
    assert sum(r.status == "passed" for r in unsplit) >= 20


# ---------------------------------------------------------------------- the caller is fine afterwards
CALLER_TAMPERING = """
import os, resource, signal
os.umask(0)
os.environ["R1LAB_TAMPERED"] = "1"
os.chdir("/")
resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
try:
    os.setsid()
except OSError:
    pass
"""


def test_caller_is_unharmed_after_the_hostile_programs(tmp_path):
    before = _caller_state()
    programs = [Program(CALLER_TAMPERING, tests=["assert True"]), Program("while True: pass", tests=["assert True"]),
                Program("x = bytearray(10**10)", tests=["assert True"]), Program(FORK_COUNTER, tests=["assert True"]),
                Program("def f(x):\n    return x + 1", tests=["assert f(1) == 2"])]
    results = run_many(programs, Limits(timeout=2), max_workers=2, guard=False)
    assert [r.status for r in results] == ["passed", "timeout", "memory", "passed", "passed"], results
    r = run_program(Program(CALLER_TAMPERING, tests=["assert True"]), FAST)      # and with the guard
    assert r.status == "passed", r
    after = _caller_state()
    for key in before:
        assert after[key] == before[key], key
    for key in ("rlimits", "ids", "cwd", "umask", "session", "signals", "namespaces", "kernel"):
        assert after[key] == CALLER_AT_START[key], key
    # and it can still do what the programs were kept from doing: write its files, start
    # processes, listen on the loopback interface (still its own network namespace)
    f = tmp_path / "still-writable.txt"
    f.write_text("ok")
    assert f.read_text() == "ok"
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True,
                          timeout=60).stdout == "42\n"
    srv = _listener()
    srv.close()

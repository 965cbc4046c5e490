"""The caller's side of the sandbox: start the child, feed it the spec, read its three pipes,
enforce the wall-clock limit, clean up, and turn what it reported into a ``SandboxResult``.
See ``r1lab/rewards/sandbox/__init__.py`` for the layers and what each one holds.
"""

from __future__ import annotations

import dataclasses
import logging
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .interpreter import AllowListError, choose_interpreter, read_allow_list

log = logging.getLogger("r1lab.rewards.sandbox")

STATUSES = ("passed", "failed", "timeout", "memory", "error")


class SandboxError(RuntimeError):
    """The sandbox cannot be set up as asked (a configuration problem, not a program's fault),
    or a layer listed in ``require`` could not be applied. The message is one line."""


# Layers a caller may insist on (``require=``): without one of them the program is not run.
REQUIRABLE = ("landlock", "seccomp", "netns", "pidns", "uid")
# Layers whose absence is logged (once per process) when they were asked for but not applied.
WARN_WHEN_MISSING = ("landlock", "seccomp")


@dataclasses.dataclass(frozen=True)
class Program:
    """What to run: ``code`` (exec'd as a module named ``__solution__``), then, in a copy of
    its namespace with ``bindings`` added (``{"candidate": "entry_point_name"}`` binds the
    name ``candidate`` to the program's ``entry_point_name``), ``setup``, then every entry
    of ``tests`` separately (each one test: it passes when it raises nothing)."""

    code: str
    tests: Sequence[str] = ()
    setup: str = ""
    bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout: float = 10.0            # wall seconds for the program and its tests
    memory_mb: int = 1024            # RLIMIT_AS
    cpu_seconds: float | None = None  # RLIMIT_CPU; default ceil(timeout) + 1
    max_processes: int = 32          # RLIMIT_NPROC (tasks, threads included) of the sandbox uid
    max_open_files: int = 128        # RLIMIT_NOFILE
    max_file_mb: int = 32            # RLIMIT_FSIZE: the largest file the program may write
    max_output_bytes: int = 64 * 1024  # kept of stdout and of stderr (the last bytes)
    startup_timeout: float = 15.0    # time allowed for the interpreter to start (busy machines)


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    status: str                      # one of STATUSES
    passed: int
    total: int
    stdout: str = ""                 # tail (the last Limits.max_output_bytes)
    stderr: str = ""
    wall_seconds: float = 0.0
    error: str = ""                  # why it did not pass, one line ("" when passed)
    tests: tuple[str, ...] = ()      # per test: "pass", "fail", "error", "memory" or "" (not run)
    truncated: bool = False          # stdout or stderr was longer than the cap
    returncode: int | None = None    # the user process's exit code, or -signal
    isolation: tuple[str, ...] = ()  # the layers that were in force (uid, netns, pidns, landlock…, guard)
    missing_layers: tuple[tuple[str, str], ...] = ()  # (layer, why) for each one asked for but not in force
    pid: int | None = None           # the sandbox process (its group/session id)
    uid: int | None = None           # the uid the code ran as, when it was dropped

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    @property
    def passed_fraction(self) -> float:
        if self.total:
            return self.passed / self.total
        return 1.0 if self.ok else 0.0

    @property
    def score(self) -> float:
        return 1.0 if self.ok else 0.0


# ---------------------------------------------------------------------- the child's program
# The child-side files, in this order, then a call of ``_main()`` (see child.py). They are
# plain Python files of this package so that they can be read (and linted) as such; the child
# gets them as the text of its ``-c`` program because it runs with the standard library only.
CHILD_SOURCES = ("landlock.py", "seccomp.py", "guard.py", "child.py")


def _harness_source() -> str:
    here = Path(__file__).resolve().parent
    return "\n\n".join((here / name).read_text(encoding="utf-8") for name in CHILD_SOURCES) + "\n\n_main()\n"


_HARNESS = _harness_source()

# ---------------------------------------------------------------------- uids, requirements, warnings
_lock = threading.Lock()
_uids_in_use: set[int] = set()
UID_BASE, UID_SPAN = 0x60000000, 1 << 24     # fresh uids for root callers: 1610612736 + [0, 2**24)
_warned: set[str] = set()


def check_require(require) -> tuple[str, ...]:
    """``require`` as a tuple of layer names from REQUIRABLE: None, a list of names or one
    string (``"landlock,seccomp"`` also works). Unknown names raise SandboxError."""
    if require is None:
        return ()
    if isinstance(require, str):
        require = [p for p in require.replace(",", " ").split() if p]
    if not isinstance(require, (list, tuple, set, frozenset)) or not all(isinstance(r, str) for r in require):
        raise SandboxError(f"require must be a list of layer names ({', '.join(REQUIRABLE)}), got {require!r}")
    unknown = [r for r in require if r not in REQUIRABLE]
    if unknown:
        raise SandboxError(f"require: unknown isolation layer(s) {', '.join(map(repr, unknown))}; "
                           f"choose from {', '.join(REQUIRABLE)}")
    return tuple(dict.fromkeys(require))


def _warn_missing(layer: str, why: str) -> None:
    """Log once per process that ``layer`` was asked for but is not in force."""
    with _lock:
        if layer in _warned:
            return
        _warned.add(layer)
    what = {"landlock": "programs can read, and write outside their folder, whatever file permissions allow",
            "seccomp": "programs can chmod/chown/set attributes on files their uid owns",
            "uid": "programs run as the caller's own uid"}.get(layer, "")
    log.warning("sandbox: %s is not in force (%s)%s; model-written programs run with less isolation. Set the "
                "code reward option require: [landlock, seccomp] (run_program(require=...)) to refuse to run "
                "instead.", layer, why, f": {what}" if what else "")


def _take_uid() -> int:
    with _lock:
        while True:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _lock:
        _uids_in_use.discard(uid)


def _kill_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process whose real uid is ``uid`` until none is left; returns how many."""
    killed = 0
    for _ in range(rounds):
        found = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            if int(line.split()[1]) == uid:
                                os.kill(int(name), signal.SIGKILL)
                                found += 1
                            break
            except (OSError, ValueError):
                continue
        killed += found
        if not found:
            break
        time.sleep(0.01)
    return killed


# ---------------------------------------------------------------------- the caller
class _Tail:
    def __init__(self, cap: int):
        self.cap, self.buf, self.total = cap, bytearray(), 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.cap + 65536:
            del self.buf[: len(self.buf) - self.cap]

    def text(self) -> str:
        return bytes(self.buf[-self.cap:] if self.cap else b"").decode("utf-8", "replace")

    @property
    def truncated(self) -> bool:
        return self.total > self.cap


class _Results:
    """Parses the nonce-prefixed lines of the result pipe; everything else is dropped."""

    def __init__(self, nonce: str, total: int):
        self.prefix = nonce.encode() + b" "
        self.buf = bytearray()
        self.events: list[tuple[float, list[str]]] = []
        self.tests = [""] * total
        self.messages = [""] * total
        self.setup_notes = self.ready_notes = None
        self.ready_at: float | None = None
        self.done = False
        self.fatal = self.program_error = self.setup_error = self.refused = ""
        self.layers_missing: dict[str, str] = {}     # layer asked for but not in force -> why
        self.memory = False
        self.missing: list[str] = []
        self.exit: tuple[str, int] | None = None
        self.cpu_seconds: float | None = None

    def feed(self, data: bytes, now: float) -> None:
        self.buf += data
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                if len(self.buf) > 65536:      # a line this long is not ours
                    self.buf.clear()
                return
            line = bytes(self.buf[:i])
            del self.buf[: i + 1]
            if line.startswith(self.prefix):
                text = line[len(self.prefix):].decode("utf-8", "replace")
                text = text.replace("\\n", "\n").replace("\\r", "\r").replace("\\\\", "\\")
                self._event(text.split(" ", 3), now)

    def _event(self, parts: list[str], now: float) -> None:
        kind, rest = parts[0], parts[1:]
        if self.done and kind != "exit":
            return
        if kind == "setup" and self.setup_notes is None:
            self.setup_notes = rest[0] if rest else ""
        elif kind == "ready" and self.ready_at is None:
            self.ready_at, self.ready_notes = now, (rest[0] if rest else "")
        elif kind == "test" and len(rest) >= 2:
            try:
                i = int(rest[0])
            except ValueError:
                return
            if 0 <= i < len(self.tests) and not self.tests[i]:
                self.tests[i] = rest[1] if rest[1] in ("pass", "fail", "error", "memory") else "error"
                self.messages[i] = rest[2] if len(rest) > 2 else ""
                if rest[1] == "memory":
                    self.memory = True
        elif kind == "done":
            self.done = True
        elif kind == "memory":
            self.memory = True
        elif kind == "program_error" and not self.program_error:
            self.program_error = " ".join(rest) or "error"
        elif kind == "setup_error" and not self.setup_error:
            self.setup_error = " ".join(rest) or "error"
        elif kind == "missing":
            self.missing.append(" ".join(rest))
        elif kind == "layer" and rest:
            self.layers_missing.setdefault(rest[0], " ".join(rest[1:]) or "not applied")
        elif kind == "refused" and not self.refused:
            self.refused = " ".join(rest) or "a required layer"
        elif kind == "fatal" and not self.fatal:
            self.fatal = " ".join(rest) or "sandbox failure"
        elif kind == "exit" and self.exit is None and len(rest) >= 2:
            try:
                self.exit = (rest[0], int(rest[1]))
                self.cpu_seconds = float(rest[2].split()[0]) if len(rest) > 2 else None
            except ValueError:
                pass


def _python_flags() -> list[str]:
    flags = ["-S", "-s", "-B"]
    return flags


def run_program(program: Program, limits: Limits | None = None, *, guard: bool = True,
                drop_privileges: bool | None = None, landlock: bool = True, seccomp: bool = True,
                namespaces: bool = True, require: Iterable[str] | str | None = None,
                python: str | None = None, tmp_root: str | None = None) -> SandboxResult:
    """Run ``program`` in a sandbox and report how its tests went (see the package docstring).

    ``drop_privileges``: run the code as a fresh uid (needs root); None = whenever the caller
    is root and an interpreter readable by other uids exists. ``guard``, ``landlock``,
    ``seccomp``, ``namespaces`` switch the other layers (tests switch them off one at a time to check
    that each layer holds on its own). A layer asked for that cannot be applied here is named
    in a warning (once per process) and missing from ``SandboxResult.isolation``;
    ``require`` (names from REQUIRABLE, e.g. ``["landlock", "seccomp"]``) raises SandboxError
    instead, before any of the program runs."""
    limits = limits or Limits()
    if limits.timeout <= 0 or limits.memory_mb <= 0:
        raise SandboxError("timeout and memory_mb must be positive")
    require = check_require(require)
    asked = {"landlock": landlock, "seccomp": seccomp, "netns": namespaces, "pidns": namespaces,
             "uid": drop_privileges is not False}
    off = [r for r in require if not asked[r]]
    if off:
        raise SandboxError(f"require lists {', '.join(off)} but that layer is switched off for this run")
    root = os.geteuid() == 0
    if drop_privileges and not root:
        raise SandboxError("drop_privileges=True needs the caller to run as root")
    if "uid" in require and not root:
        raise SandboxError("require lists uid: running the code as a fresh uid needs the caller to run as root")
    drop = root if drop_privileges is None else bool(drop_privileges)
    extra_notes = []
    interpreter, note = choose_interpreter(python, drop)
    if drop and not interpreter:
        if drop_privileges or "uid" in require:
            raise SandboxError(note)
        drop = False
        extra_notes.append("no-uid: " + note)
        _warn_missing("uid", note)
        interpreter, note = choose_interpreter(python, False)
    if note:
        extra_notes.append(note)
    try:
        read_paths = list(read_allow_list(interpreter)) if landlock else []
    except AllowListError as e:
        raise SandboxError(f"sandbox: {e}") from None
    tests = [str(t) for t in program.tests]
    cpu = limits.cpu_seconds if limits.cpu_seconds is not None else math.ceil(limits.timeout) + 1
    nonce = secrets.token_hex(16)
    uid = _take_uid() if drop else None
    tmp = tempfile.mkdtemp(prefix="r1lab-sandbox-", dir=tmp_root)
    rfd = wfd = -1
    proc = None
    t0 = time.monotonic()
    try:
        if uid is not None:
            os.chown(tmp, uid, uid)
        spec = {"nonce": nonce, "code": str(program.code), "setup": str(program.setup or ""), "tests": tests,
                "bindings": {str(k): str(v) for k, v in dict(program.bindings).items()},
                "tmpdir": tmp, "uid": uid, "guard": bool(guard), "landlock": bool(landlock), "seccomp": bool(seccomp),
                "namespaces": bool(namespaces), "read_paths": read_paths, "require": list(require),
                "limits": {"memory_bytes": int(limits.memory_mb) * 1024 * 1024, "cpu_seconds": max(1, math.ceil(cpu)),
                           "file_bytes": int(limits.max_file_mb) * 1024 * 1024,
                           "max_open_files": int(limits.max_open_files), "max_processes": int(limits.max_processes)}}
        spec_path = os.path.join(tmp, ".harness-spec")
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps(spec))
        rfd, wfd = os.pipe()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        argv = [interpreter, *_python_flags(), "-c", _HARNESS, str(wfd), spec_path]
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(wfd,), cwd=tmp, env=env, start_new_session=True, close_fds=True)
        except OSError as e:
            return SandboxResult("error", 0, len(tests), error=f"cannot start the sandbox: {e}",
                                 tests=("",) * len(tests), wall_seconds=time.monotonic() - t0, uid=uid)
        os.close(wfd)
        wfd = -1
        out, err = _Tail(limits.max_output_bytes), _Tail(limits.max_output_bytes)
        results = _Results(nonce, len(tests))
        timed_out = _communicate(proc, rfd, out, err, results, limits, t0)
        rfd = -1
        wall = time.monotonic() - t0
        if results.refused:
            raise SandboxError(f"sandbox: refusing to run the program: required isolation missing: {results.refused}")
        for layer, why in results.layers_missing.items():
            if layer in WARN_WHEN_MISSING:
                _warn_missing(layer, why)
        return _result(results, out, err, timed_out, wall, proc, uid, tests, extra_notes, spec["limits"]["cpu_seconds"])
    finally:
        if proc is not None:
            _reap(proc)
        if uid is not None:
            if proc is not None:
                _kill_uid(uid)
            _release_uid(uid)
        for fd in (rfd, wfd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(tmp):        # a program that chmod-ed its files away (non-root callers)
            for dirpath, dirnames, _ in os.walk(tmp):
                for d in dirnames:
                    try:
                        os.chmod(os.path.join(dirpath, d), 0o700)
                    except OSError:
                        pass
            shutil.rmtree(tmp, ignore_errors=True)


def _reap(proc: subprocess.Popen) -> None:
    """Kill what is left of the sandbox's process group (the leader is not reaped yet, so
    its pid cannot have been reused) and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for f in (proc.stdout, proc.stderr):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass


def _exited(pid: int) -> bool:
    """Has ``pid`` exited? (Leaves it unreaped.)"""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _communicate(proc, rfd, out: _Tail, err: _Tail, results: _Results, limits: Limits, t0: float) -> bool:
    """Read the three pipes until the sandbox is done or out of time; True when timed out.
    Closes ``rfd``."""
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): out.feed, proc.stderr.fileno(): err.feed}
    pidfd = -1
    try:
        for fd in (*streams, rfd):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(proc.pid)
                sel.register(pidfd, selectors.EVENT_READ)
            except OSError:
                pidfd = -1
        open_pipes = 3
        exited_at = None
        timed_out = False
        startup_deadline = t0 + limits.startup_timeout + limits.timeout
        while True:
            now = time.monotonic()
            deadline = results.ready_at + limits.timeout if results.ready_at is not None else startup_deadline
            if exited_at is None:
                if now >= deadline:
                    timed_out = not results.done
                    break
                if pidfd < 0 and _exited(proc.pid):
                    exited_at = now
            if exited_at is not None and (open_pipes == 0 or now - exited_at > 0.25):
                break
            wait = deadline - now if exited_at is None else 0.25 - (now - exited_at)
            if pidfd < 0:
                wait = min(wait, 0.02)
            for key, _ in sel.select(max(0.0, wait)):
                fd = key.fd
                if fd == pidfd:
                    exited_at = time.monotonic()
                    sel.unregister(pidfd)
                    continue
                _drain(fd, streams, results, sel)
                if fd not in sel.get_map():
                    open_pipes -= 1
        if timed_out or exited_at is not None:
            # whatever the killed/exited processes left in the pipes
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            end = time.monotonic() + 0.5
            while open_pipes and time.monotonic() < end:
                ready = sel.select(0.05)
                if not ready:
                    break
                for key, _ in ready:
                    if key.fd == pidfd:
                        sel.unregister(pidfd)
                        continue
                    _drain(key.fd, streams, results, sel)
                    if key.fd not in sel.get_map():
                        open_pipes -= 1
        return timed_out
    finally:
        sel.close()
        if pidfd >= 0:
            os.close(pidfd)
        os.close(rfd)


def _drain(fd: int, streams, results: _Results, sel) -> None:
    for _ in range(64):                  # at most 4 MiB per wake-up, then let the others speak
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            sel.unregister(fd)
            return
        if fd in streams:
            streams[fd](data)
        else:
            results.feed(data, time.monotonic())


def _result(results: _Results, out: _Tail, err: _Tail, timed_out: bool, wall: float, proc, uid, tests,
            extra_notes, cpu_limit: float) -> SandboxResult:
    total = len(tests)
    passed = sum(1 for t in results.tests if t == "pass")
    exit_ = results.exit
    returncode = None
    if exit_ is not None:
        returncode = exit_[1] if exit_[0] == "code" else -exit_[1]
    signame = ""
    if returncode is not None and returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
    notes = [n for n in (results.ready_notes or results.setup_notes or "").split(",") if n and n != "-"]
    notes += extra_notes
    # RLIMIT_CPU: SIGXCPU at the soft limit; SIGKILL at the hard one (the user process is the
    # init of its PID namespace, which ignores SIGXCPU, and code may also catch it)
    cpu_killed = signame == "SIGXCPU" or (signame == "SIGKILL" and results.cpu_seconds is not None
                                          and results.cpu_seconds >= cpu_limit - 0.05)
    if timed_out or cpu_killed:
        status, error = "timeout", ("wall-clock limit exceeded" if timed_out else "CPU-time limit exceeded")
    elif results.fatal:
        status, error = "error", "sandbox: " + results.fatal
    elif results.memory:
        status, error = "memory", "memory limit exceeded (MemoryError)"
    elif results.program_error:
        status, error = "error", results.program_error
    elif not results.done:
        how = f"killed by {signame}" if signame else f"exited with code {returncode}" if returncode is not None \
            else "stopped"
        status, error = "error", f"the program {how} before the tests finished"
    elif results.setup_error:
        status, error = "failed", "test setup failed: " + results.setup_error
    elif passed == total:
        status, error = "passed", ""
    else:
        status = "failed"
        first = next(i for i, t in enumerate(results.tests) if t != "pass")
        error = f"test {first} {results.tests[first] or 'not run'}" + (
            f": {results.messages[first]}" if results.messages[first] else "")
        if results.missing:
            error = f"{', '.join(results.missing)} is not defined; " + error
    return SandboxResult(status=status, passed=passed, total=total,
                         stdout=out.text(), stderr=err.text(), wall_seconds=wall, error=error.strip()[:1000],
                         tests=tuple(results.tests), truncated=out.truncated or err.truncated,
                         returncode=returncode, isolation=tuple(notes),
                         missing_layers=tuple(results.layers_missing.items()), pid=proc.pid, uid=uid)


def run_many(programs: Iterable[Program], limits: Limits | None = None, *, max_workers: int | None = None,
             **options) -> list[SandboxResult]:
    """``run_program`` over ``programs`` on a thread pool (default: one worker per CPU,
    at most 8), results in input order."""
    programs = list(programs)
    if not programs:
        return []
    workers = max_workers or min(8, os.cpu_count() or 1)
    workers = max(1, min(workers, len(programs)))
    if workers == 1:
        return [run_program(p, limits, **options) for p in programs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p: run_program(p, limits, **options), programs))


def isolation_report() -> dict:
    """What this machine allows (runs one trivial program): the layers in force and why others are missing."""
    r = run_program(Program("pass", tests=["assert True"]), Limits(timeout=10))
    return {"status": r.status, "isolation": list(r.isolation), "missing": dict(r.missing_layers),
            "root": os.geteuid() == 0,
            "interpreter": choose_interpreter(None, os.geteuid() == 0)[0] or sys.executable}

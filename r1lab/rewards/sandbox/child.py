"""The sandboxed child: enter the namespaces, fork, drop the uid, apply Landlock, seccomp,
the limits and the guard, then run the user code and its tests and report.

Child-side source: ``runner.py`` sends ``landlock.py``, ``seccomp.py``, ``guard.py`` and this
file, followed by a call of ``_main()``, as the ``-c`` program of a fresh interpreter (standard
library only), run as ``python -S -s -B -c HARNESS <result fd> <spec file>``. The outer
process (the session leader) reads the spec, enters the namespaces and forks; the inner one
(``_inner``) sets up the rest and runs the code. ``_landlock``, ``_seccomp`` and ``_guard``
are defined by the files sent before this one.

Every report is one line on the result pipe, starting with the run's nonce: ``setup``,
``ready`` (the layers in force), ``layer <name> <why it is missing>``, ``refused`` (a layer
listed in ``require`` could not be applied: no user code runs), ``test``, ``done``, ``exit`` …
"""
import marshal
import os
import sys

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
    why = {}                             # layer -> why it is not in force (reported, see _inner)
    libc = ctypes = None
    if spec["namespaces"] or spec["landlock"] or spec["seccomp"]:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
        except Exception as e:
            libc = ctypes = None
            for layer in ("netns", "pidns", "landlock", "seccomp"):
                why[layer] = "no ctypes to make the system calls (%s)" % _describe(e)
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
            else:
                why["netns"] = why["pidns"] = ("the caller is not root and the kernel refuses it a user "
                                               "namespace (unshare: %s)" % _errno_name(ctypes.get_errno()))
        if privileged:
            for flag, layer in ((CLONE_NEWNET, "netns"), (CLONE_NEWPID, "pidns")):
                if libc.unshare(flag) == 0:
                    notes.append(layer)
                else:
                    why[layer] = "unshare: %s" % _errno_name(ctypes.get_errno())
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
            code = _inner(spec, emit, owner, tools, notes, why)
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


def _errno_name(e):
    import errno
    return errno.errorcode.get(e, str(e))


def _describe(e):
    try:
        msg = str(e)
    except BaseException:
        msg = "?"
    msg = type(e).__name__ + (": " + msg if msg else "")
    return msg[:500]


def _inner(spec, emit, owner, tools, notes, why):
    import builtins, _signal, resource
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
    lim = spec["limits"]
    nproc = lim["max_processes"]
    if uid is None and "userns" not in notes:
        nproc += _count_tasks(os.getuid())   # RLIMIT_NPROC counts every task of this uid (reads /proc: before Landlock)
    if spec["landlock"] and libc is not None:
        try:
            abi, reason = _landlock(libc, ctypes, tmp, spec["read_paths"])
        except Exception as e:
            abi, reason = 0, "harness: " + _describe(e)
        if abi:
            notes.append("landlock%d" % abi)
        else:
            why["landlock"] = reason
    if spec["seccomp"] and libc is not None:
        try:
            ok, reason = _seccomp(libc, ctypes)
        except Exception as e:
            ok, reason = False, "harness: " + _describe(e)
        if ok:
            notes.append("seccomp")
        else:
            why["seccomp"] = reason
    have = {"landlock" if n.startswith("landlock") else n for n in notes}
    asked = {"netns": spec["namespaces"], "pidns": spec["namespaces"], "landlock": spec["landlock"],
             "seccomp": spec["seccomp"]}
    for layer, wanted in asked.items():
        if wanted and layer not in have:
            emit("layer", layer, why.get(layer, "not applied"))
    missing = [layer for layer in spec["require"] if layer not in have]
    if missing:                          # before any user code runs
        emit("refused", "; ".join("%s (%s)" % (layer, why.get(layer, "not applied")) for layer in missing))
        return 73
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



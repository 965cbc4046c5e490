"""Which interpreter runs the sandboxed code, and what of the host it must be able to read.

``choose_interpreter(python, drop)``: the caller's interpreter, or, when the code runs as a
fresh uid and the caller's interpreter lies where other uids cannot read it (a pyenv under
/root), a world-readable one of the same version.

``read_allow_list(python)``: the paths Landlock lets the sandboxed program read (besides its
own folder and ``/dev/null``, ``/dev/zero``, ``/dev/urandom``, ``/dev/random``, which
``landlock.py`` adds), the way nsjail or bubblewrap mount only what a program must see:

* the interpreter's binary (its real path) and its standard library: every folder of its
  ``sys.path`` under ``-S`` (``lib/pythonX.Y``, ``lib-dynload``, the stdlib zip);
* the shared-library folders ``/lib``, ``/lib64``, ``/usr/lib``, ``/usr/lib64`` and the loader's
  cache ``/etc/ld.so.cache`` (extension modules such as ``_decimal`` or ``_hashlib`` load their
  libraries when first imported); a library that ``ldd`` finds elsewhere for the binary or an
  extension module (a ``libpython`` under a pyenv prefix, ``/usr/local/lib``…) is allowed as
  that one file, not its folder;
* the time-zone database ``/usr/share/zoneinfo`` (for ``zoneinfo``; public data).

Not allowed: ``sys.prefix`` and ``sys.base_prefix`` as a whole (for a system interpreter that
is ``/usr``), ``site-packages`` of a virtual environment (often inside the checkout, beside its
files): the program runs with ``-S -s``, the standard library only, so it never needs them.
A ``site-packages`` folder inside the standard library's own folder (python.org and pyenv
builds) or Debian's ``/usr/lib/python3/dist-packages`` stays readable (public package code,
never importable under ``-S``). ``/etc``, ``/home``, ``/root``, ``/tmp``, ``/proc`` and the
checkout are not readable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading

LIBRARY_FOLDERS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")
LOADER_FILES = ("/etc/ld.so.cache",)
DATA_FOLDERS = ("/usr/share/zoneinfo",)
PROBE_TIMEOUT = 60.0                 # seconds for the interpreter probe and for ldd (busy machines)

_PROBE = ("import sys, os, json; print(json.dumps({'version': list(sys.version_info[:2]), "
          "'stdlib': os.path.dirname(os.__file__), 'executable': os.path.realpath(sys.executable), "
          "'path': [p for p in sys.path if p]}))")

_lock = threading.Lock()
_probes: dict[str, dict | None] = {}
_choices: dict[tuple[str, bool], tuple[str, str]] = {}
_allow_lists: dict[str, tuple[str, ...]] = {}


class AllowListError(RuntimeError):
    """The interpreter needs a path too broad to allow (``/``, a top-level folder, a folder
    holding the caller's home, temporary or working folder)."""


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


def probe(python: str) -> dict | None:
    """``{"version": [major, minor], "stdlib", "executable" (real path), "path"}`` of ``python``
    run as the sandbox runs it (``-S -s -B``), or None when it does not run. Cached."""
    with _lock:
        if python in _probes:
            return _probes[python]
    try:
        out = subprocess.run([python, "-S", "-s", "-B", "-c", _PROBE], capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
        found = json.loads(out.stdout)
        found["version"] = tuple(found["version"])
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError):
        found = None
    with _lock:
        _probes[python] = found
    return found


def choose_interpreter(python: str | None, drop: bool) -> tuple[str, str]:
    """``(interpreter, note)``: ``python`` (default ``sys.executable``); when the code will run
    as another uid, one that uid can read (the same major.minor version), else ("", reason)."""
    python = python or sys.executable
    key = (python, drop)
    with _lock:
        if key in _choices:
            return _choices[key]
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
            probed = probe(cand)
            if probed is None or (want is not None and probed["version"] != want) \
                    or not _world_reachable(probed["stdlib"]):
                continue
            found = (cand, "" if cand == python else f"interpreter {cand}")
            break
    with _lock:
        _choices[key] = found
    return found


def _beneath(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _too_broad(path: str) -> bool:
    """A folder the sandbox must never be allowed to read as a whole."""
    if os.path.dirname(path) == "/" or path == "/":
        return True
    # the caller's home, temporary and working folders (and the interpreter's prefix when it
    # is a virtual environment inside the checkout) may hold secrets: no folder above them
    for keep in (os.path.expanduser("~"), tempfile.gettempdir(), os.getcwd()):
        if keep and _beneath(os.path.realpath(keep), path):
            return True
    return False


def _shared_libraries(files: list[str]) -> set[str]:
    """The real paths of the shared libraries ``ldd`` resolves for ``files`` (empty when there
    is no ``ldd``); run with the sandbox's environment (no LD_LIBRARY_PATH)."""
    ldd = shutil.which("ldd", path="/usr/bin:/bin")
    if not ldd or not files:
        return set()
    try:
        out = subprocess.run([ldd, *files], capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    libs = set()
    for line in out.splitlines():
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s+(/\S+)\s+\(0x", line)
        if m:
            libs.add(os.path.realpath(m.group(1)))
    return libs


def read_allow_list(python: str) -> tuple[str, ...]:
    """The host paths the sandboxed program may read (see the module docstring). Cached per
    interpreter. Raises AllowListError when the interpreter's own files are too broad to allow."""
    with _lock:
        if python in _allow_lists:
            return _allow_lists[python]
    probed = probe(python)
    if probed is None:
        raise AllowListError(f"cannot run {python} to find its standard library")
    fixed = [*LIBRARY_FOLDERS, *LOADER_FILES, *DATA_FOLDERS]
    roots = [os.path.realpath(p) for p in LIBRARY_FOLDERS if os.path.exists(p)]
    paths = [p for p in fixed if os.path.exists(p)]
    own = [probed["executable"], probed["stdlib"], *probed["path"]]
    for p in own:
        real = os.path.realpath(p)
        if not os.path.exists(real) or any(_beneath(real, r) for r in roots):
            continue
        if os.path.isdir(real) and _too_broad(real):
            raise AllowListError(f"the sandbox would have to let programs read all of {real} "
                                 f"(the standard library of {python}); use another interpreter")
        paths.append(real)
    modules = [probed["executable"]]
    for folder in probed["path"]:
        if os.path.isdir(folder):
            modules += sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".so"))
    for lib in sorted(_shared_libraries(modules)):
        if not any(_beneath(lib, r) for r in roots) and not any(_beneath(lib, p) for p in paths):
            paths.append(lib)            # one file, not its folder
    found = tuple(dict.fromkeys(paths))
    with _lock:
        _allow_lists[python] = found
    return found

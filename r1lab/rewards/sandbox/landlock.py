"""Landlock, applied in the sandboxed child (kernel >= 5.13, no privileges needed).

Child-side source: ``runner.py`` sends this file, with ``seccomp.py``, ``guard.py`` and
``child.py``, as the ``-c`` program of a fresh interpreter (standard library only).

The ruleset handles reading, listing, executing and every write-like access (and, with newer
ABIs, TCP and signals), so each of them is refused everywhere except where a rule allows it:

* the program's temporary folder: everything but executing;
* ``read_paths`` (computed by ``interpreter.read_allow_list``: the interpreter's standard
  library and binary, the shared-library folders): reading files and listing folders;
* ``/dev/null`` read and write, ``/dev/zero``, ``/dev/urandom``, ``/dev/random`` read.

Nothing may be executed (``execve`` of anything fails). Landlock does not check ``stat``,
``readlink`` or already open descriptors: a program can learn that a path exists, not read it.

The ABI version comes from ``landlock_create_ruleset(NULL, 0, VERSION)``; a right is handled
only when the kernel's ABI has it (REFER from 2, TRUNCATE from 3, TCP from 4, scopes from 6),
so the same ruleset is valid on every kernel since 5.13. READ_FILE, READ_DIR and EXECUTE are
ABI 1 rights: reads are restricted on every kernel with Landlock. IOCTL_DEV (ABI 5) is left
unhandled: the only device files the program can open at all are the four above.
"""

import os

_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_REFER, _LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_LL_ABI1 = (1 << 13) - 1                        # EXECUTE … MAKE_SYM: every right of ABI 1
# the rights a rule on a file (not a folder) may carry
_LL_FILE_RIGHTS = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE | _LL_IOCTL_DEV
_LL_DEVICES = (("/dev/null", True), ("/dev/zero", False), ("/dev/urandom", False), ("/dev/random", False))
_LL_SYS_CREATE_RULESET, _LL_SYS_ADD_RULE, _LL_SYS_RESTRICT_SELF = 444, 445, 446   # the same on every arch


def _landlock(libc, ctypes, tmp, read_paths):
    """Restrict this process (and all it forks) as the module docstring says. Returns
    ``(abi, "")`` with the ABI version in force, or ``(0, why)`` when nothing was applied."""
    import errno, struct
    sc = libc.syscall
    sc.restype = ctypes.c_long
    L = ctypes.c_long

    def failed(what):
        e = ctypes.get_errno()
        return "%s failed: %s" % (what, errno.errorcode.get(e, e))

    abi = sc(L(_LL_SYS_CREATE_RULESET), None, L(0), L(1))   # (NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0, failed("landlock_create_ruleset") + " (kernel without Landlock, or Landlock not enabled)"
    fs = _LL_ABI1
    if abi >= 2:
        fs |= _LL_REFER
    if abi >= 3:
        fs |= _LL_TRUNCATE
    net = 3 if abi >= 4 else 0                     # BIND_TCP | CONNECT_TCP
    scoped = 3 if abi >= 6 else 0                  # ABSTRACT_UNIX_SOCKET | SIGNAL
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    rs = sc(L(_LL_SYS_CREATE_RULESET), buf, L(len(attr)), L(0))
    if rs < 0:
        return 0, failed("landlock_create_ruleset")
    read = _LL_READ_FILE | _LL_READ_DIR

    def allow(path, rights):
        """Add a rule; False when it could not be added (a missing path adds nothing)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_mode & 0o170000 != 0o040000:    # not a folder
                rights &= _LL_FILE_RIGHTS
            rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & fs, fd), 12)
            return sc(L(_LL_SYS_ADD_RULE), L(rs), L(1), rule, L(0)) == 0   # LANDLOCK_RULE_PATH_BENEATH
        finally:
            os.close(fd)
    try:
        if not allow(tmp, fs & ~_LL_EXECUTE):
            return 0, failed("landlock_add_rule for the sandbox folder")
        for path in read_paths:
            allow(path, read)
        for path, writable in _LL_DEVICES:
            allow(path, _LL_READ_FILE | (_LL_WRITE_FILE | _LL_TRUNCATE if writable else 0))
        if libc.prctl(38, 1, 0, 0, 0) != 0:           # PR_SET_NO_NEW_PRIVS
            return 0, failed("prctl(PR_SET_NO_NEW_PRIVS)")
        if sc(L(_LL_SYS_RESTRICT_SELF), L(rs), L(0)) != 0:
            return 0, failed("landlock_restrict_self")
    finally:
        os.close(rs)
    return abi, ""

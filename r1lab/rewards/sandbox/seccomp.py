"""seccomp, applied in the sandboxed child (no privileges needed).

Child-side source: ``runner.py`` sends this file, with ``landlock.py``, ``guard.py`` and
``child.py``, as the ``-c`` program of a fresh interpreter (standard library only).

A filter makes the system calls that change a file's mode, owner or extended attributes fail
with EPERM: Landlock does not cover them, and a caller that is not root runs the code under
its own uid, whose files it could otherwise chmod/chown. Every system call of another ABI
(32-bit, x32) fails too, so none of these can be reached through another number.
"""

import os

_SECCOMP_DENY = {
    "x86_64": (0xC000003E, (90, 91, 92, 93, 94, 260, 268, 452, 188, 189, 190, 197, 198, 199)),
    "aarch64": (0xC00000B7, (52, 53, 54, 55, 452, 5, 6, 7, 14, 15, 16)),
}


def _seccomp(libc, ctypes):
    """Install the filter. Returns ``(True, "")``, or ``(False, why)``."""
    import errno, struct
    arch = _SECCOMP_DENY.get(os.uname().machine)
    if arch is None:
        return False, "no seccomp filter for the %s architecture" % os.uname().machine
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

    def failed(what):
        e = ctypes.get_errno()
        return "%s failed: %s" % (what, errno.errorcode.get(e, e))
    if libc.prctl(38, 1, 0, 0, 0) != 0:                 # PR_SET_NO_NEW_PRIVS
        return False, failed("prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:   # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        return False, failed("prctl(PR_SET_SECCOMP)") + " (kernel without seccomp filters?)"
    return True, ""

"""Child processes that end with the process that started them, started without a ``preexec_fn``.

A ``preexec_fn`` makes :class:`subprocess.Popen` use ``fork()``, which runs the ``pthread_atfork`` handlers of
every library loaded in this process. gRPC's (loaded by ``tritonclient.grpc`` and ``pytriton``) restart its
event-engine poller thread in the child; ``Popen`` then closes the inherited descriptors before ``exec``, the
poller's ``epoll_wait`` fails with EBADF and gRPC aborts the child: the server never starts and its log holds
one line, ``Epoll1Poller ... epoll_wait error: Bad file descriptor`` (about 1 start in 150 here, and a CI run
lost to it). Without a ``preexec_fn`` CPython starts the child with ``vfork()``, which runs no fork handlers.

What the ``preexec_fn`` did now happens in the child itself: :func:`command` puts a few lines of Python in
front of the program (this interpreter, without site-packages) that ask Linux to send SIGTERM when the parent
ends (``PR_SET_PDEATHSIG``, kept across ``exec``), exit at once if the parent is already gone, optionally
restore SIGINT's default disposition, and ``exec`` the program under the same process id.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

# argv: parent pid, flags ("d": die with the parent, "i": default SIGINT), then the program and its arguments.
_SHIM = """\
import os, signal, sys
parent, flags, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if "d" in flags and sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(143)  # the parent ended before the request: end as its SIGTERM would have ended this
if "i" in flags:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    print(f"Error: cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
"""


def command(program: Sequence[str], *, die_with_parent: bool = True, default_sigint: bool = False) -> list[str]:
    """``program`` (a command line) behind the shim: ended with SIGTERM when this process ends
    (``die_with_parent``, Linux), with SIGINT's default disposition (``default_sigint``: a job started in the
    background by a shell without job control inherits SIGINT ignored)."""
    if not program:
        raise ValueError("an empty command line")
    flags = ("d" if die_with_parent else "") + ("i" if default_sigint else "") or "-"
    return [sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid()), flags, *map(str, program)]


def spawn(program: Sequence[str], *, die_with_parent: bool = True, default_sigint: bool = False,
          **popen: object) -> subprocess.Popen:
    """:class:`subprocess.Popen` of ``program`` through :func:`command` (keywords go to ``Popen``; a
    ``preexec_fn`` is refused, since it is what this module avoids)."""
    if popen.get("preexec_fn") is not None:
        raise ValueError("spawn() starts children without a preexec_fn (gRPC's fork handlers abort such children)")
    return subprocess.Popen(command(program, die_with_parent=die_with_parent, default_sigint=default_sigint),
                            **popen)

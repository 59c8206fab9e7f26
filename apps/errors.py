"""One line and a non-zero exit for an operating-system error in any command (issue 21, item 2).

A full disk, a read-only or forbidden folder, or a name too long for the file system reaches the
command from wherever it happened (a checkpoint, a mask, an export, a Triton repository); each
command converts it here, once, into ``Error: cannot write /path: no space left on the device
(ENOSPC); free some space or write elsewhere`` and exit status 1, instead of a traceback.
``mrdl``'s group applies :func:`os_errors_as_one_line` to every subcommand and ``mrdl-export``
to itself. A broken pipe (the reader of stdout went away) is left to click, which exits quietly.
"""

from __future__ import annotations

import errno
import functools
from contextlib import contextmanager
from typing import Callable, Iterator

import click

# errno -> what to do next
HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space within the quota or write elsewhere",
    errno.EROFS: "the file system is mounted read-only: write elsewhere",
    errno.EACCES: "check the permissions of the file and its folder, or write elsewhere",
    errno.EPERM: "check the permissions of the file and its folder, or write elsewhere",
    errno.ENAMETOOLONG: "use a shorter name or a shorter folder path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
    errno.EIO: "the device reported an input/output error: check the disk",
}


def os_error_line(exc: OSError) -> str:
    """``cannot use PATH: STRERROR (ENAME); HINT`` for an operating-system error, on one line."""
    where = f" {exc.filename}" if exc.filename is not None else ""
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    reason = (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    hint = HINTS.get(exc.errno, "")
    text = f"cannot use{where}: {reason[:1].lower()}{reason[1:]}" + (f" ({name})" if name else "")
    return " ".join((text + (f"; {hint}" if hint else "")).split())  # one line, whatever the file name holds


@contextmanager
def os_errors_reported() -> Iterator[None]:
    """Turn an OSError raised inside into a :class:`click.ClickException` of :func:`os_error_line` (exit 1)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise
        raise click.ClickException(os_error_line(exc)) from None


def os_errors_as_one_line(function: Callable) -> Callable:
    """A click command callback (or ``Group.invoke``) with :func:`os_errors_reported` around it."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with os_errors_reported():
            return function(*args, **kwargs)

    return wrapper


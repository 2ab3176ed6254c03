"""Reading a file a user names (a recipe, a SLURM config): a regular file of bounded size, or one line.

A FIFO would block forever, ``/dev/zero`` never ends, a directory, a symlink loop, a name
with a NUL byte or longer than the OS allows raise an OSError or ValueError deep inside:
each is a one-line `SpecError` naming the file and what it is, before anything is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import SpecError, shown

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a file of `mode` is, in words ("a regular file", "a directory", ...)."""
    return next(
        (kind for test, kind in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "not a regular file"
    )


def read_small_file(path, limit: int, what: str) -> bytes:
    """The bytes of the regular file `path` (at most `limit` of them); a one-line SpecError naming `what`
    and the file otherwise. Opened without blocking (a FIFO) and checked by its open descriptor (no race)."""
    name = shown(str(path), 120)
    try:
        fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise SpecError(f"{what} {name} not found") from None
    except ValueError:  # an embedded NUL byte
        raise SpecError(f"{what} {name}: a file name cannot contain a NUL byte") from None
    except OSError as error:  # a symlink loop, a name too long, no permission, ...
        raise SpecError(f"{what} {name}: cannot open it ({error.strerror or error})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"{what} {name} is {file_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise SpecError(f"{what} {name} is {info.st_size} bytes; at most {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        raise SpecError(f"{what} {name}: cannot read it ({error.strerror or error})") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew since fstat
        raise SpecError(f"{what} {name} is larger than {limit} bytes")
    return data

"""Reading a file the user may have replaced by something else: a FIFO (a read that waits
for ever), a device (/dev/zero: a read that fills the memory), a folder."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# A config file the tool reads whole (a sweep file, a template file) is a few KB of TOML.
MAX_CONFIG_BYTES = 1 << 20


class NotARegularFile(OSError):
    """The path is not a regular file: an OSError, so that every reader that takes an
    unreadable file in its stride takes this one too."""


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path` (a symlink to one is fine). NotARegularFile for
    a FIFO, device, socket or folder, without waiting on it; with `limit`, for a file of more
    bytes than that too. Other OSErrors (a missing file) as the file system says."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO's open waits for no writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, a device)"
            raise NotARegularFile(errno.EINVAL, kind, str(path))
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise NotARegularFile(errno.EFBIG, f"over {limit:,} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def toml_text(raw: bytes, shown: str) -> str:
    """A config file's bytes (a template file, a sweep file) as text, or a ConfigError that
    says it is not UTF-8 (UTF-16 when its byte-order mark says so: a Windows editor's; a
    stray byte in UTF-8 text) and how to mend it. utf-8-sig: a byte-order mark (Windows
    Notepad's) was "Invalid statement (at line 1, column 1)"; .env and invoke.yaml take one
    too."""
    from podcycle.errors import ConfigError

    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # utf-8-sig counts from after a byte-order mark: the file's own offset is 3 more.
        start = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw[:start].count(b"\n") + 1
        said = (f"{shown} is not UTF-8 text (line {line}, byte {start}: "
                f"{raw[start:start + 1]!r}")
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise ConfigError(said + "; it is UTF-16); TOML files are UTF-8",
                              "save the file as UTF-8 (e.g. iconv -f utf-16 -t utf-8), then "
                              "run again") from None
        if any(ord(char) > 127 and char != "\ufffd"
               for char in raw.decode("utf-8", errors="replace")):
            # UTF-8 elsewhere (an accent that decodes): a stray byte (a paste, a binary
            # editor), which iconv from Latin-1 would turn into two wrong characters more.
            raise ConfigError(said + "; the rest is UTF-8); TOML files are UTF-8",
                              f"retype the text at line {line} (a stray byte, pasted?), then "
                              "run again") from None
        raise ConfigError(said + "); TOML files are UTF-8",
                          "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), then run "
                          "again") from None

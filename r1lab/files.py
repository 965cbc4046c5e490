"""Small file helpers shared by every entry point: atomic writes and JSONL reading."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers see the old
    file or the new one, never a half-written one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def iter_jsonl(lines: Iterable[str], source: str | os.PathLike, error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line; a malformed line raises ``error`` with a
    one-line message naming ``source`` and the line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{source} line {lineno}: not valid JSON ({e.msg})") from None


def jsonable(x: Any) -> Any:
    """``x`` if JSON can write it, else its ``str`` (golds of any task go into JSONL logs)."""
    try:
        json.dumps(x)
        return x
    except (TypeError, ValueError):
        return str(x)


def text_chunks(lines: Iterable[str], chunk_chars: int) -> Iterator[str]:
    """Consecutive lines joined into chunks of at least ``chunk_chars`` characters (cut at
    line ends; the last chunk may be shorter) — plain-text files as training documents."""
    buf: list[str] = []
    size = 0
    for line in lines:
        buf.append(line)
        size += len(line)
        if size >= chunk_chars:
            yield "".join(buf)
            buf, size = [], 0
    if buf:
        yield "".join(buf)

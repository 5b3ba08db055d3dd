"""Compare two file trees by what a restore must keep: the verify of a file-level restore.

::

    result = compare_trees(source_root, target_root)   # TreeDifferenceError at the first difference
    result.digest                                       # BLAKE3 over every entry, the same for both

Both trees are walked in the same (sorted) order, side by side; for every path its kind,
mode, owner, group, modification time, extended attributes (ACLs and capabilities are
ones), hard-link group and content (BLAKE3 of a file's bytes, a link's target, a device's
number) are compared. Folder sizes and link counts are not (they differ between
filesystems). Access and change times are not (reading changes the one, copying the other).
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from rescueui.core.errors import CancelledError, RescueError
from rescueui.core.text import safe_text

BLOCK = 4 * 1024 * 1024
_Entry = tuple[str, tuple[tuple[str, str], ...], int]  # path, its fields, its file bytes


class TreeDifferenceError(RescueError):
    """The copied tree is not the source's."""


@dataclass
class TreeSum:
    digest: str  # BLAKE3 over all entries (hex)
    entries: int
    file_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {"blake3": self.digest, "entries": self.entries, "file_bytes": self.file_bytes}


def _xattrs(path: str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return out


def _content(
    path: str, size: int, progress: Callable[[int], None], cancel: Callable[[], bool]
) -> str:
    h = blake3.blake3()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0))
    try:
        while True:
            if cancel():
                raise CancelledError("The verify of the copied files was cancelled.")
            data = os.read(fd, BLOCK)
            if not data:
                break
            h.update(data)
            progress(len(data))
    finally:
        os.close(fd)
    return h.hexdigest()


def _entries(
    root: Path, progress: Callable[[int], None], cancel: Callable[[], bool]
) -> Iterator[_Entry]:
    """(path inside the tree, its entry, file bytes) for every path, in sorted order."""
    links: dict[tuple[int, int], str] = {}
    stack = ["/"]
    while stack:
        if cancel():
            raise CancelledError("The verify of the copied files was cancelled.")
        rel = stack.pop()
        host = os.path.join(root, rel.lstrip("/")) if rel != "/" else os.fspath(root)
        st = os.lstat(host)
        mode = st.st_mode
        fields: list[tuple[str, str]] = [
            ("kind", _kind(mode)),
            ("mode", f"{stat.S_IMODE(mode):o}"),
            ("owner", f"{st.st_uid}:{st.st_gid}"),
        ]
        size = 0
        if not stat.S_ISLNK(mode):
            fields.append(("modification time", str(st.st_mtime_ns)))
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(mode) and st.st_nlink > 1 and key in links:
            fields.append(("hard link", links[key]))
        elif stat.S_ISREG(mode):
            size = st.st_size
            fields += [("size", str(size)), ("content", _content(host, size, progress, cancel))]
        elif stat.S_ISLNK(mode):
            fields.append(("link target", os.readlink(host)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            fields.append(("device number", f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"))
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            links.setdefault(key, rel)
        for name, value in _xattrs(host):
            fields.append((f"extended attribute {name}", value.hex()))
        entry = tuple(fields)
        yield rel, entry, size
        if stat.S_ISDIR(mode):
            names = sorted(os.listdir(host), reverse=True)
            stack += [f"{rel.rstrip('/')}/{n}" for n in names]


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "link"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "other"


def compare_trees(
    source: Path,
    target: Path,
    *,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> TreeSum:
    """Walk both trees side by side; their common :class:`TreeSum`, or
    :class:`TreeDifferenceError` naming the first path that differs. ``progress`` gets the
    target's file bytes as they are read."""
    tick = progress or (lambda _n: None)
    stop = (lambda: cancel.is_set()) if cancel is not None else (lambda: False)
    h = blake3.blake3()
    finished = threading.Event()
    src = _ahead(_entries(source, lambda _n: None, lambda: stop() or finished.is_set()), finished)
    dst = _entries(target, tick, stop)
    try:
        return _compare(src, dst, h)
    finally:
        finished.set()  # the source's walk ends too (a difference was found, or cancel)
        for _ in src:  # let its thread see it and end
            pass


def _ahead(
    entries: Iterator[_Entry], finished: threading.Event, depth: int = 64
) -> Iterator[_Entry]:
    """``entries`` made by a thread of their own, up to ``depth`` ahead (the source's walk
    and hashing run beside the target's: reading files and BLAKE3 release the GIL). Once
    ``finished`` is set the walk stops and its end is quiet."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)

    def run() -> None:
        try:
            for e in entries:
                out.put(("entry", e))
        except BaseException as exc:  # raised in the comparing thread
            out.put(("error", exc))
        else:
            out.put(("end", None))

    threading.Thread(target=run, name="treesum-source", daemon=True).start()
    while True:
        kind, value = out.get()
        if kind == "error":
            if isinstance(value, CancelledError) and finished.is_set():
                return
            raise value
        if kind == "end":
            return
        yield value


def _compare(src: Iterator[_Entry], dst: Iterator[_Entry], h: Any) -> TreeSum:
    count = total = 0
    while True:
        a = next(src, None)
        b = next(dst, None)
        if a is None and b is None:
            break
        if a is None or b is None or a[0] != b[0]:
            if b is None or a is None:
                what = f"{safe_text((a or b)[0])} is " + (
                    "missing on the target" if b is None else "on the target, not in the image"
                )
            else:
                what = f"{safe_text(a[0])} in the image, {safe_text(b[0])} on the target"
            raise TreeDifferenceError(
                f"The copied files are not the image's: {what}.",
                hint="The target is not a faithful copy; restore again, or onto another disk.",
            )
        if a[1] != b[1]:
            raise TreeDifferenceError(
                f"The copied files are not the image's: {safe_text(a[0])} differs in its "
                + _what_differs(a[1], b[1])
                + ".",
                hint="The target is not a faithful copy; restore again, or onto another disk.",
            )
        line = "\0".join([a[0], *(f"{k}={v}" for k, v in a[1])]).encode("utf-8", "surrogateescape")
        h.update(len(line).to_bytes(8, "little") + line)
        count += 1
        total += a[2]
    return TreeSum(h.hexdigest(), count, total)


def _what_differs(a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...]) -> str:
    da, db = dict(a), dict(b)
    names = [k for k in dict.fromkeys([*da, *db]) if da.get(k) != db.get(k)]
    return ", ".join(names) or "order of its attributes"

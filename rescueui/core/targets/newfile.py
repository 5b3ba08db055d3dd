"""A disk image file this run makes: created new (never over an existing file or through a
link), sparse, and removed again only while it is still the very file made (same inode).

Both the restore onto a new disk image file and the disk of a new virtual machine start
here, so one rule says how such a file is made and when it may be deleted.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from rescueui.core.errors import RescueError, UnsafeTargetError
from rescueui.core.units import human_size


@dataclass(frozen=True)
class NewFile:
    """A file this run created: only this very file (same inode) is ever removed again."""

    path: str
    dev: int
    ino: int

    def still_ours(self) -> bool:
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def remove(self) -> bool:
        """Remove the file if it is still the one this run created; True if it is gone."""
        if not self.still_ours():
            return False
        try:
            os.unlink(self.path)
        except OSError:
            return False
        return True


def create_new_file(path: str, size: int) -> NewFile:
    """Create ``path`` as a new sparse file of ``size`` bytes; nothing is left behind when
    this fails. :class:`UnsafeTargetError` (action ``new-name``) if the name is taken."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except FileExistsError as exc:
        raise UnsafeTargetError(
            f"{path} already exists; only a new file is made here, never one overwritten.",
            hint="Choose a new name, or delete the old file if it is not needed.",
            action="new-name",
        ) from exc
    except OSError as exc:
        raise RescueError(
            f"Cannot create {path}: {exc.strerror}.",
            hint="Check the folder exists and can be written, or choose another place.",
        ) from exc
    try:
        st = os.fstat(fd)
        made = NewFile(path, st.st_dev, st.st_ino)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        made.remove()
        raise RescueError(
            f"Cannot make {path} {human_size(size)} ({size} bytes) large: {exc.strerror}.",
            hint="Choose a smaller size or a filesystem that holds files this large "
            "(FAT: at most 4 GiB).",
        ) from exc
    except BaseException:
        made.remove()
        raise
    finally:
        os.close(fd)
    return made

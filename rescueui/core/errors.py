"""One exception hierarchy for everything the engine can refuse or fail at.

Every message is written for the operator's screen: it names the thing (file,
device, stream, chunk, offset) and says what to do next.
"""

from __future__ import annotations


class RescueError(Exception):
    """Base of all errors the engine raises on purpose.

    ``hint`` is the next step for the operator; it is appended to the message
    shown on screen.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class DiskError(RescueError):
    """A disk could not be found, read or identified."""


class UnsafeTargetError(RescueError):
    """The target is refused by a safety rule (boot medium, mounted, image medium, ...)."""


class TargetChangedError(UnsafeTargetError):
    """The device at the confirmed path is not the one the operator confirmed."""


class TargetTooSmallError(RescueError):
    """The target cannot hold the image."""


class ImageError(RescueError):
    """An image is missing, unreadable, malformed or of an unknown version."""


class CorruptImageError(ImageError):
    """Image data does not match its recorded hashes (or is truncated)."""


class UnsupportedImageError(ImageError):
    """The image uses a format or version this tool does not understand."""


class CaptureError(RescueError):
    """Capturing a disk into an image failed."""


class RestoreError(RescueError):
    """Restoring an image failed (I/O error, device removed, ...)."""


class VerifyError(RescueError):
    """A read-back verification found the target differs from the image."""


class PreflightError(RescueError):
    """A pre-flight check stopped the job."""


class CancelledError(RescueError):
    """The operator cancelled the job."""

    exit_code = 130


class LockError(RescueError):
    """Another rescueui instance is already writing on this machine."""


class ToolMissingError(RescueError):
    """An external program the job needs (sfdisk, qemu-img, ...) is not installed."""


class JournalError(RescueError):
    """A restore journal exists but cannot be used (not a regular file, too large, malformed,
    or not the journal of this image and target); resuming from it is not possible."""

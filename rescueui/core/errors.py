"""One exception hierarchy for everything the engine can refuse or fail at.

Every message is written for the operator's screen: it names the thing (file,
device, stream, chunk, offset) and says what to do next.
"""

from __future__ import annotations

ACTIONS = {
    "resume": "continue the same restore where it stopped (after re-checking what was written)",
    "accept-warnings": "acknowledge the pre-flight warnings and go ahead",
    "restore-partition": "restore one image partition onto an existing partition",
    "whole-disk": "restore or capture the whole disk instead of one partition",
    "allow-mounted": "capture a mounted source all the same",
}
"""Next steps a front end can offer in its own words (``RescueError.action``)."""


class RescueError(Exception):
    """Base of all errors the engine raises on purpose.

    ``hint`` is the next step for the operator, in the engine's words (no command-line
    flags, no key names); it is appended to the message shown on screen. ``action``, when
    set, names that step for a front end to render in its own words (one of
    :data:`ACTIONS`: the CLI shows the option, the TUI the key).
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, action: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.action = action

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


class AdaptError(RestoreError):
    """The restore is written and verified, but a fix-up of the restored system failed."""


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

"""``X-Dragonfly-Output-Path``: the proxy also puts a P2P object at a path the client names.

As in Dragonfly, the object lands at the path as a hard link to the task's content file
when the path is on the data dir's filesystem, else as a copy;
``X-Dragonfly-Force-Hard-Link: true`` makes a copy an error. A daemon that writes
wherever a request says is a way for anyone who can reach the proxy to overwrite files,
so this one writes only under the directories in ``proxy.output_dirs`` (none by
default: the header is refused), never over an existing file, and never through a
symlink in the last component. The file appears whole or not at all: a copy is written
to a temporary name in the same directory, then linked into place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path


class OutputPathError(Exception):
    """The output path cannot be written; ``status`` is the HTTP answer (403: not
    allowed by the configuration, 400: a bad path or a failed write)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OutputWriter:
    """Checks output paths against ``proxy.output_dirs`` and writes objects there."""

    def __init__(self, allowed_dirs: list[Path], data_dir: Path) -> None:
        self.allowed = [Path(os.path.realpath(d)) for d in allowed_dirs]
        self.data_dir = data_dir

    def check(self, path: str, force_hard_link: bool) -> Path:
        """The real path to write ``path`` to, or OutputPathError saying why not."""
        if not self.allowed:
            raise OutputPathError(
                403,
                f"X-Dragonfly-Output-Path {path!r} refused: this daemon writes no output "
                f"paths; list the directories it may write in proxy.output_dirs",
            )
        given = Path(path)
        if not given.is_absolute():
            raise OutputPathError(400, f"X-Dragonfly-Output-Path {path!r} must be absolute")
        # The directory is resolved (symlinks followed: where the file would really
        # go); the last component is not, and must not exist at all.
        parent = Path(os.path.realpath(given.parent))
        target = parent / given.name
        if not any(parent == d or d in parent.parents for d in self.allowed):
            shown = ", ".join(str(d) for d in self.allowed)
            raise OutputPathError(
                403,
                f"X-Dragonfly-Output-Path {path!r} is outside proxy.output_dirs ({shown}): "
                f"write under one of them, or add its directory there",
            )
        if not parent.is_dir():
            raise OutputPathError(
                400, f"X-Dragonfly-Output-Path {path!r}: directory {str(parent)!r} does not exist"
            )
        if os.path.lexists(target):
            raise OutputPathError(
                400,
                f"X-Dragonfly-Output-Path {path!r} already exists: remove it or choose "
                f"another path (the proxy never overwrites)",
            )
        if force_hard_link and os.stat(parent).st_dev != os.stat(self.data_dir).st_dev:
            raise OutputPathError(
                400,
                f"X-Dragonfly-Force-Hard-Link: {path!r} is on another filesystem than the "
                f"data dir {str(self.data_dir)!r}, so it cannot be a hard link: choose a path "
                f"on that filesystem or drop the header to get a copy",
            )
        return target

    def write(self, content: Path, target: Path, force_hard_link: bool) -> str:
        """Put ``content`` at ``target`` (blocking: run it in a thread); returns "hard
        link" or "copy". OutputPathError when it cannot."""
        try:
            os.link(content, target)
            return "hard link"
        except FileExistsError:
            raise OutputPathError(
                400, f"X-Dragonfly-Output-Path {str(target)!r} appeared meanwhile: not replaced"
            ) from None
        except OSError as exc:
            if force_hard_link or exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise OutputPathError(
                    400, f"cannot hard-link the object to {str(target)!r}: {exc.strerror}"
                ) from None
        temporary = target.with_name(f".{target.name}.d7y-{uuid.uuid4().hex[:12]}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o644)
            with open(content, "rb") as source, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            os.link(temporary, target)  # fails rather than replace a file made meanwhile
            return "copy"
        except OSError as exc:
            raise OutputPathError(
                400, f"cannot copy the object to {str(target)!r}: {exc.strerror or exc}"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

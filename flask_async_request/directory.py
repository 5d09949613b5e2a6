"""The directory store: each result a file in one directory, a volume every process shares.

A result is written to a temporary file in the directory (``.<name>.<random>.part``),
a block at a time, ``fsync``'d, then renamed to its name only once complete:
a reader never sees a file being written. A crash mid-write leaves only a
``.part`` file, which the purge deletes once its job no longer runs it and it
has not been written to for ``stale_after`` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .storage import Leftover, LocalFile, ResultMissing, ResultStore, Written, parse_name

#: Bytes read from a result file at a time, as it is served.
READ_SIZE = 1024 * 1024

_PART = ".part"


def path_of(location: str) -> Path | None:
    """The file a ``file:`` location names; ``None`` for another location."""
    parts = urlsplit(location)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parts.path))


class DirectoryStore(ResultStore):
    """Results as files in ``root``, a directory all web and worker processes see at one path.

    :param root: the directory; made (with its parents) if missing. It should
        hold nothing else: the purge deletes the files in it that are no job's.
    :param mode: the permissions of each result file (a web server that
        serves them with ``X-Sendfile`` must be able to read them).
    :param stale_after: seconds a write cut short is kept after it was last
        written to, before the purge deletes it (only once its job no longer
        runs that attempt); also the least age of a complete file that is no
        job's result before it is deleted, so a result renamed into place is
        never deleted while its job's end is being stored.
    """

    scheme = "file"

    def __init__(
        self, root: str | os.PathLike[str], *, mode: int = 0o640, stale_after: float = 3600
    ):
        self.root = Path(root).absolute()
        self.mode = mode
        self.stale_after = stale_after

    def describe(self) -> str:
        return str(self.root)

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def location_of(self, name: str) -> str:
        return (self.root / name).as_uri()

    def owns(self, location: str) -> bool:
        path = path_of(location)
        return path is not None and path.parent == self.root

    def _path(self, location: str) -> Path:
        path = path_of(location)
        if path is None or path.parent != self.root or parse_name(path.name) is None:
            raise ResultMissing(f"{location!r} is not a result of the directory {self.root}.")
        return path

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Written:
        """Write ``chunks`` to a temporary file, ``fsync`` it, rename it to ``name``."""
        self._ensure_root()
        digest = hashlib.sha256()
        size = 0
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=_PART, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), self.mode)
                for chunk in chunks:
                    if not chunk:
                        continue
                    digest.update(chunk)
                    file.write(chunk)
                    size += len(chunk)
                file.flush()
                os.fsync(file.fileno())
            final = self.root / name
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._sync_directory()
        return Written(size, digest.hexdigest(), final.as_uri())

    def _sync_directory(self) -> None:
        """Make the rename durable: ``fsync`` the directory itself, where the OS allows it."""
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def read(self, location: str, start: int, stop: int) -> Iterator[bytes]:
        path = self._path(location)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise ResultMissing(f"The result {path.name} is gone.") from None
        with file:
            file.seek(start)
            position = start
            while position < stop:
                block = file.read(min(READ_SIZE, stop - position))
                if not block:
                    raise ResultMissing(f"The result {path.name} is shorter than recorded.")
                yield block
                position += len(block)

    def delete(self, location: str) -> None:
        path = path_of(location)
        if path is None or path.parent != self.root:
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def leftovers(self) -> Iterator[Leftover]:
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            return
        now = time.time()
        with entries:
            for entry in entries:
                name, complete = entry.name, True
                if name.startswith(".") and name.endswith(_PART):
                    # .<job>-<attempt>.<random>.part
                    name, complete = name[1:].partition(".")[0], False
                key = parse_name(name)
                if key is None:
                    continue
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                yield Leftover(Path(entry.path).as_uri(), key[0], key[1], age, complete)

    def serve(self, location: str, *, expires_in: int) -> LocalFile:
        path = self._path(location)
        return LocalFile(str(path), path.name)

    def size_of(self, location: str) -> int | None:
        """The size of the file at ``location`` now; ``None`` if it is gone."""
        try:
            return self._path(location).stat().st_size
        except (FileNotFoundError, ResultMissing):
            return None

"""A TinyDB storage that survives power cuts and costs the same per write at any size.

Stock TinyDB rewrites the whole file on every write, so a write gets slower as the data
grows, and a power cut mid-write can leave half a file. Here a write appends one line to
a journal (only the documents that changed) and fsyncs it; the snapshot is rewritten
only now and then, atomically (temporary file, fsync, rename). On open, the snapshot is
read and the journal replayed; a torn last line (the power went mid-append) is dropped,
so the database always opens, in the state of the last write that completed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

log = logging.getLogger(__name__)

Doc = dict[str, Any]
Tables = dict[str, dict[str, Doc]]
#: One table's change: (table name, documents written in full, document ids removed).
Change = tuple[str, dict[str, Doc], list[str]]


class DatabaseDamaged(Exception):
    """The snapshot cannot be read; the journal alone cannot rebuild it."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalStorage(Storage):
    """Snapshot + append-only journal. Use with `JournalDB` (its tables report changes)."""

    #: Compact when the journal outgrows both this and twice the snapshot.
    min_compact_bytes = 8 * 1024 * 1024

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.snapshot_path = Path(path)
        self.journal_path = self.snapshot_path.with_suffix(".journal")
        self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        self._data: Tables = {}
        #: Set when memory and disk may disagree and nothing can tell which is right:
        #: every later write is refused until the kiosk restarts and reads the disk again.
        self._broken = ""
        self._pending: list[Change] = []
        self._depth = 0
        self._load()
        self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    # --- loading ---------------------------------------------------------------------

    def _load(self) -> None:
        tmp = self.snapshot_path.with_suffix(".tmp")
        if tmp.exists():  # a compaction the power cut interrupted before its rename
            tmp.unlink()
        try:
            text = self.snapshot_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        if text:
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise DatabaseDamaged(f"{self.snapshot_path}: damaged snapshot ({exc})") from None
            if not isinstance(data, dict):
                raise DatabaseDamaged(f"{self.snapshot_path}: damaged snapshot (not an object)")
            self._data = data
        self._snapshot_bytes = len(text)
        self._journal_bytes = self._replay()

    def _replay(self) -> int:
        """Apply every journal line; cut off a torn last line. Returns the good length.

        Appends only ever tear at the end. A bad line with good ones after it is damage,
        not a power cut: the database refuses to open rather than drop the lines after it.
        """
        try:
            blob = self.journal_path.read_bytes()
        except FileNotFoundError:
            return 0
        good = 0
        lines = blob.splitlines(keepends=True)
        for i, line in enumerate(lines):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no newline")
                record = json.loads(line)
                changes = [(str(t), dict(s), list(d)) for t, s, d in record["c"]]
            except (ValueError, KeyError, TypeError, RecursionError):
                if i < len(lines) - 1:
                    raise DatabaseDamaged(
                        f"{self.journal_path}: line {i + 1} of {len(lines)} is damaged"
                    ) from None
                break
            for change in changes:
                self._apply(change)
            good += len(line)
        if good < len(blob):
            log.warning(
                "%s: dropped %d bytes of an unfinished write", self.journal_path, len(blob) - good
            )
            with open(self.journal_path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        return good

    def _apply(self, change: Change) -> None:
        name, written, removed = change
        table = self._data.setdefault(name, {})
        table.update(written)
        for doc_id in removed:
            table.pop(doc_id, None)

    # --- the TinyDB storage interface ------------------------------------------------

    def read(self) -> Tables:
        return self._data

    def write(self, data: Mapping[str, Any]) -> None:
        """A whole-database write (TinyDB's drop_table and friends): compact."""
        self._data = dict(data)
        self.compact()

    def close(self) -> None:
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1

    # --- what JournalTable calls -----------------------------------------------------

    def _discard_memory_only(self) -> None:
        """A write refused by a broken database must not linger in memory either."""
        with contextlib.suppress(Exception):
            self._data = {}
            self._load()

    def table_data(self, name: str) -> dict[str, Doc]:
        return self._data.setdefault(name, {})

    def record(self, change: Change) -> None:
        self._pending.append(change)
        if self._depth == 0:
            self._flush()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes inside share one journal line: all of them are durable, or none."""
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._discard()
            raise
        self._depth -= 1
        if self._depth == 0:
            self._flush()

    def _discard(self) -> None:
        """Undo in-memory changes that never reached the disk, by reading the disk again."""
        self._pending.clear()
        try:
            self._data = {}
            self._load()
        except Exception as exc:
            self._broken = f"the kiosk database could not be read back ({exc}); restart the kiosk"
            raise

    def _flush(self) -> None:
        if not self._pending:
            return
        changes = self._pending
        self._pending = []
        if self._broken:
            self._discard_memory_only()
            raise OSError(errno.EIO, self._broken)
        start = self._journal_bytes
        try:
            # ASCII-escaped: any text at all (even a lone surrogate) can be written.
            blob = (json.dumps({"c": changes}, separators=(",", ":")) + "\n").encode()
            _write_all(self._journal_fd, blob)
            os.fsync(self._journal_fd)
        except BaseException:
            # Nothing of this write may count: cut the journal back to where it was,
            # then rebuild memory from the disk, which is the truth.
            try:
                os.ftruncate(self._journal_fd, start)
                os.fsync(self._journal_fd)
            except OSError as exc:
                # The line may or may not be on disk: neither memory nor a re-read can be
                # trusted to match what the customer was told. Stop writing.
                self._broken = f"the journal could not be cut back ({exc}); restart the kiosk"
                self._discard_memory_only()
                raise
            self._discard()
            raise
        self._journal_bytes += len(blob)
        if self._journal_bytes > max(self.min_compact_bytes, 2 * self._snapshot_bytes):
            try:
                self.compact()
            except OSError as exc:  # the write above is safe in the journal; try later
                log.warning("compaction failed (%s); the journal keeps growing for now", exc)

    def compact(self) -> None:
        """Write the whole state as the new snapshot, then start an empty journal."""
        tmp = self.snapshot_path.with_suffix(".tmp")
        blob = json.dumps(self._data, separators=(",", ":")).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.snapshot_path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.snapshot_path.parent)
        # Replaying the old journal onto the new snapshot changes nothing, so a power cut
        # between the rename and this truncate is harmless.
        os.ftruncate(self._journal_fd, 0)
        self._snapshot_bytes, self._journal_bytes = len(blob), 0
        os.fsync(self._journal_fd)


def _write_all(fd: int, blob: bytes) -> None:
    """os.write may write less than asked (a full disk): go on or fail, never stop short."""
    view = memoryview(blob)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


class _Tracked(MutableMapping[int, Doc]):
    """The table as TinyDB's updaters see it, noting which documents they touch."""

    def __init__(self, raw: dict[str, Doc]) -> None:
        self.raw = raw
        self.touched: set[str] = set()
        self.removed: set[str] = set()

    def __getitem__(self, key: int) -> Doc:
        doc = self.raw[str(key)]
        self.touched.add(str(key))  # updaters change documents in place
        return doc

    def __setitem__(self, key: int, value: Doc) -> None:
        self.raw[str(key)] = value
        self.touched.add(str(key))
        self.removed.discard(str(key))

    def __delitem__(self, key: int) -> None:
        del self.raw[str(key)]
        self.touched.discard(str(key))
        self.removed.add(str(key))

    def __contains__(self, key: object) -> bool:
        return str(key) in self.raw

    def __iter__(self) -> Iterator[int]:
        return (int(k) for k in list(self.raw))

    def __len__(self) -> int:
        return len(self.raw)


class JournalTable(Table):
    """A TinyDB table whose writes touch only the documents they change."""

    def _update_table(self, updater: Callable[[dict[int, Mapping[str, Any]]], None]) -> None:
        storage = self._storage
        assert isinstance(storage, JournalStorage)
        view = _Tracked(storage.table_data(self.name))
        updater(view)  # type: ignore[arg-type]
        written = {k: view.raw[k] for k in view.touched if k in view.raw}
        if written or view.removed:
            storage.record((self.name, written, sorted(view.removed)))
        self.clear_cache()


class JournalDB(TinyDB):
    table_class = JournalTable

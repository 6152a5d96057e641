"""The kiosk's durable store: outbox, redeemed coupons, members, revocations, commands.

TinyDB behind one repository class. Every change a scan causes (the event in the
outbox, the coupon marked used, the member's visit) lands in ONE durable write, and that
write is on disk (written to a temporary file, fsynced, renamed over the old one, the
directory fsynced) before `record` returns: the customer never sees an outcome that a
power cut could take back, and a torn write can never leave a half file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from kiosk.decisions import Decision, Facts
from o2o_protocol.codes import Code, CodeType
from o2o_protocol.messages import Command, CommandName, Event, new_event_id
from o2o_protocol.timeutil import rfc3339

log = logging.getLogger(__name__)

DB_FILE = "kiosk.json"
#: Revocations name a code id, whatever its type.
REVOKED = "revoked"


class StoreError(Exception):
    """The store could not be opened or written; nothing was recorded."""


class AtomicJSONStorage(Storage):
    """A TinyDB storage that keeps the data in memory and replaces the file atomically.

    Inside `batch()` writes only touch memory; the batch ends with one durable write, so
    several tables change together or not at all.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, dict[str, Any]] | None = self._load()
        self._depth = 0
        self._dirty = False

    def _load(self) -> dict[str, dict[str, Any]] | None:
        tmp = self.path.with_suffix(".tmp")
        if tmp.exists():  # a write that a power cut interrupted before its rename
            tmp.unlink()
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self.path}: store file is damaged ({exc})") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self.path}: store file is damaged (not an object)")
        return data

    def read(self) -> dict[str, dict[str, Any]] | None:
        return self._data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self._data = data
        if self._depth:
            self._dirty = True
        else:
            self._flush()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._dirty:
            self._dirty = False
            self._flush()

    def _flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        blob = json.dumps(self._data, separators=(",", ":"), ensure_ascii=False).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Recorded:
    """An outcome that is now on disk."""

    event: Event
    decision: Decision


class KioskStore:
    """Everything the kiosk must remember, behind small verbs. Thread-safe."""

    def __init__(self, data_dir: Path, *, store: str, kiosk: str) -> None:
        self.store_id, self.kiosk_id = store, kiosk
        self._lock = threading.RLock()
        try:
            self._db = TinyDB(data_dir / DB_FILE, storage=AtomicJSONStorage)
        except OSError as exc:
            raise StoreError(f"{data_dir}: cannot open the kiosk store ({exc})") from None
        self._storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        self._outbox = self._db.table("outbox", cache_size=0)
        self._redeemed = self._db.table("redeemed", cache_size=0)
        self._revoked = self._db.table("revoked", cache_size=0)
        self._members = self._db.table("members", cache_size=0)
        self._meta = self._db.table("meta", cache_size=0)

    # --- reading what decisions need -------------------------------------------------

    def facts_for(self, code: Code) -> Facts:
        """The few stored facts the pure decision needs about one verified code."""
        with self._lock:
            revoked = self._revoked.contains(doc_id=_doc_id(code.id, REVOKED))
            if code.type is CodeType.COUPON:
                used = self._redeemed.get(doc_id=_doc_id(code.id, CodeType.COUPON))
                return Facts(revoked=revoked, coupon_used_at=used["at"] if used else None)
            if code.type is CodeType.MEMBER:
                member = self._members.get(doc_id=_doc_id(code.id, CodeType.MEMBER))
                if member is None:
                    return Facts(revoked=revoked)
                return Facts(
                    revoked=revoked,
                    member_visits=member["visits"],
                    member_points=member["points"],
                    member_last_day=member.get("last_day"),
                )
            return Facts(revoked=revoked)

    # --- recording outcomes ----------------------------------------------------------

    def record(self, decision: Decision, now: float) -> Recorded:
        """Write the outcome's event and its effects in one durable write."""
        with self._lock, self._storage.batch():
            seq = self._next_seq()
            event = Event(
                id=new_event_id(),
                seq=seq,
                type=decision.event_type.value,
                ts=rfc3339(now),
                store=self.store_id,
                kiosk=self.kiosk_id,
                data=decision.data,
            )
            self._outbox.insert(Document(event.model_dump(mode="json"), doc_id=seq))
            if decision.redeem_coupon is not None:
                doc = {"id": decision.redeem_coupon, "at": event.ts, "event": event.id}
                self._redeemed.insert(
                    Document(doc, doc_id=_doc_id(decision.redeem_coupon, CodeType.COUPON))
                )
            if decision.member_visit is not None:
                visit = decision.member_visit
                self._members.upsert(
                    Document(
                        {
                            "id": visit.member_id,
                            "name": visit.name,
                            "visits": visit.visits,
                            "points": visit.points,
                            "last_day": visit.day,
                        },
                        doc_id=_doc_id(visit.member_id, CodeType.MEMBER),
                    )
                )
        return Recorded(event=event, decision=decision)

    def _next_seq(self) -> int:
        meta = self._meta.get(doc_id=1) or {"seq": 0, "last_cmd_seq": 0}
        seq = int(meta["seq"]) + 1
        self._meta.upsert(Document({**meta, "seq": seq}, doc_id=1))
        return seq

    # --- the outbox ------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[Event]:
        """Un-acked events, oldest first."""
        with self._lock:
            docs = sorted(self._outbox.all(), key=lambda d: d.doc_id)
        if limit is not None:
            docs = docs[:limit]
        return [Event.model_validate(dict(d)) for d in docs]

    def ack(self, ids: Iterable[str]) -> int:
        """Drop acked events from the outbox; returns how many left it."""
        wanted = set(ids)
        if not wanted:
            return 0
        with self._lock:
            doc_ids = [d.doc_id for d in self._outbox.all() if d["id"] in wanted]
            if doc_ids:
                self._outbox.remove(doc_ids=doc_ids)
        return len(doc_ids)

    def outbox_size(self) -> int:
        with self._lock:
            return len(self._outbox)

    # --- commands from the bridge ----------------------------------------------------

    @property
    def last_cmd_seq(self) -> int:
        with self._lock:
            meta = self._meta.get(doc_id=1)
            return int(meta["last_cmd_seq"]) if meta else 0

    def apply_command(self, cmd: Command) -> bool:
        """Apply a command once, in order. Returns False for a repeat or an out-of-order one."""
        with self._lock, self._storage.batch():
            last = self.last_cmd_seq
            if cmd.seq != last + 1:
                return False
            if cmd.name == CommandName.CODE_REVOKE:
                code_id = str(cmd.data.get("id", ""))
                if code_id:
                    self._revoked.upsert(Document({"id": code_id}, _doc_id(code_id, REVOKED)))
            else:
                log.info("command %s (seq %d) is not handled by this kiosk", cmd.name, cmd.seq)
            meta = self._meta.get(doc_id=1) or {"seq": 0}
            self._meta.upsert(Document({**meta, "last_cmd_seq": cmd.seq}, doc_id=1))
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _doc_id(code_id: str, namespace: str) -> int:
    """A stable integer document id per (namespace, code id), so lookups are O(1)."""
    digest = hashlib.blake2b(f"{namespace}:{code_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1

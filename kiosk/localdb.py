"""The kiosk's local database: outbox, history, coupons, members, preorders, lockers,
rewards, code pools and ratings.

("Store" in this project is the shop; this is the database on the kiosk's SD card.)
TinyDB behind one repository class, on a journaled storage (`kiosk.journal`): every
change a scan causes (the event in the outbox, the coupon marked used, the member's
visit) lands in ONE fsynced journal line before `record` returns, so the customer never
sees an outcome that a power cut could take back, and a write costs the same with a
hundred or a hundred thousand events stored.

The database decides nothing: decisions and commands arrive as typed effects
(`kiosk.effects`) and are applied here with one `match`. It never reads the wall clock
for data it writes: times come in as `now` (or from the injected `clock`).

Longer than most modules, on purpose: every table sits behind one lock and every write
in one journal batch; splitting the class by table would split that guarantee.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinydb.table import Document

from kiosk.decisions import Decision, Facts, Preorder
from kiosk.effects import (
    CodeRevoked,
    CodeUsed,
    Effect,
    MemberUpdate,
    MemberVisit,
    NewMember,
    PointsSpent,
    PoolCodesAdded,
    PoolCodeTaken,
    PreorderCancelled,
    PreorderChange,
    PreorderDetails,
    Rated,
    RemoteOpenQueued,
    RemoteOpenSettled,
    RewardsReplaced,
    StockTaken,
)
from kiosk.journal import DatabaseDamaged, JournalDB, JournalStorage
from o2o_protocol.codes import Code, CodeType, Rejected, decode_unverified, extract_token
from o2o_protocol.messages import Event, PoolCode, Reward, new_event_id
from o2o_protocol.timeutil import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

DB_FILE = "kiosk.json"
#: Revocations name a code id, whatever its type.
REVOKED = "revoked"
PRUNE_EVERY_S = 3600.0
#: Own changes kept per member until the bridge counts them. The bridge names only the
#: latest 50 of them per member (`applied`), and one that never sends `applied` never
#: clears any: past this many, the oldest go, so a member's document (written again at
#: every visit) stays small on a kiosk that is offline for months.
MAX_PENDING = 100
#: A pooled code that expires sooner than this is neither offered nor handed out: a
#: voucher printed today must leave its holder time to use it.
FRESH_FOR_S = 7 * 86400


class DBError(Exception):
    """The local database could not be opened or written; nothing was recorded."""


@dataclass(frozen=True)
class Recorded:
    """An outcome that is now on disk."""

    event: Event
    decision: Decision


def _doc_id(key: str, namespace: str) -> int:
    """A stable integer document id per (namespace, key), so lookups are O(1)."""
    digest = hashlib.blake2b(f"{namespace}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class KioskDB:
    """Everything the kiosk must remember, behind small verbs. Thread-safe.

    `store_id` is the shop's id (as in the protocol), `kiosk_id` this kiosk's.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        store: str,
        kiosk: str,
        lockers: Iterable[tuple[int, str]] = (),
        history_days: int = 90,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store_id, self.kiosk_id = store, kiosk
        self.history_days = history_days
        self.clock = clock
        self._lock = threading.RLock()
        self._lock_fd = _lock_dir(data_dir)
        try:
            self._db = JournalDB(data_dir / DB_FILE, storage=JournalStorage)
        except DatabaseDamaged as exc:
            os.close(self._lock_fd)
            raise DBError(f"{exc}; a copy of {data_dir} helps recover it") from None
        except OSError as exc:
            os.close(self._lock_fd)
            raise DBError(f"{data_dir}: cannot open the kiosk database ({exc})") from None
        self._storage: JournalStorage = self._db.storage  # type: ignore[assignment]
        t = self._db.table
        self._outbox = t("outbox", cache_size=0)
        self._history = t("history", cache_size=0)
        self._redeemed = t("redeemed", cache_size=0)
        self._revoked = t("revoked", cache_size=0)
        self._members = t("members", cache_size=0)
        self._phones = t("phones", cache_size=0)
        self._preorders = t("preorders", cache_size=0)
        self._lockers = t("lockers", cache_size=0)
        self._meta = t("meta", cache_size=0)
        self._remote_opens = t("remote_opens", cache_size=0)
        self._rewards = t("rewards", cache_size=0)
        self._pool = t("pool", cache_size=0)
        self._pool_taken = t("pool_taken", cache_size=0)
        self._rated = t("rated", cache_size=0)
        # Acks name event ids; the outbox is keyed by seq. Rebuilt on open, kept in step.
        self._outbox_seq: dict[str, int] = {}
        self._reindex()
        self._last_prune = 0.0
        try:
            self._sync_lockers(lockers)
            self.prune(clock())
        except OSError as exc:
            self.close()
            raise DBError(f"{data_dir}: cannot write the kiosk database ({exc})") from None

    def _reindex(self) -> None:
        """Acks name event ids; the outbox is keyed by seq. Rebuilt on open and rollback."""
        self._outbox_seq = {
            doc["id"]: int(k) for k, doc in self._storage.table_data("outbox").items()
        }

    def _sync_lockers(self, lockers: Iterable[tuple[int, str]]) -> None:
        """The configured bank is the truth; occupancy survives restarts.

        A locker no longer configured leaves the database (its order, if any, goes back to
        waiting for staff), so no decision ever sends a customer to a door that is gone.
        """
        wanted = dict(lockers)
        with self._storage.batch():
            for doc in list(self._lockers):
                if wanted and doc["number"] not in wanted:
                    order = doc.get("order")
                    if order:
                        self._set_preorder(order, "pending", None)
                    self._lockers.remove(doc_ids=[doc.doc_id])
            for number, size in wanted.items():
                existing = self._lockers.get(doc_id=number)
                if existing is None or existing.get("size") != size:
                    order = existing.get("order") if existing else None
                    self._lockers.upsert(
                        Document({"number": number, "size": size, "order": order}, number)
                    )

    # --- reading what decisions need -------------------------------------------------

    def facts_for(self, code: Code, *, staff: bool = False) -> Facts:
        """The few stored facts the pure decision needs about one verified code."""
        with self._lock:
            revoked = self._revoked.contains(doc_id=_doc_id(code.id, REVOKED))
            if code.type is CodeType.COUPON:
                used = self._redeemed.get(doc_id=_doc_id(code.id, CodeType.COUPON))
                if used is None:
                    return Facts(revoked=revoked)
                # Documents written before visit cards have no count: one use.
                count = int(used.get("count") or 1)
                return Facts(revoked=revoked, coupon_used_at=used["at"], coupon_uses=count)
            if code.type is CodeType.MEMBER:
                return self._member_facts(code.id, revoked)
            if code.type is CodeType.RESERVATION:
                came = self._redeemed.get(doc_id=_doc_id(code.id, CodeType.RESERVATION))
                return Facts(revoked=revoked, reservation_arrived_at=came["at"] if came else None)
            if code.type is CodeType.PICKUP:
                order = code.order
                free = self.free_lockers() if staff else ()
                return Facts(revoked=revoked, preorder=self.preorder(order), free_lockers=free)
            return Facts(revoked=revoked)

    def member_facts(self, member_id: str) -> Facts:
        """A member's balance and last visits as decisions see them (0 for a stranger)."""
        with self._lock:
            return self._member_facts(member_id, False)

    def _member_facts(self, member_id: str, revoked: bool) -> Facts:
        member = self._members.get(doc_id=_doc_id(member_id, CodeType.MEMBER))
        if member is None:
            return Facts(revoked=revoked)
        # `points`/`visits` are the bridge's (or, in a document of the previous release,
        # the kiosk's own totals): both are the base the pending changes go on top of.
        pending = member.get("pending") or []
        return Facts(
            revoked=revoked,
            member_visits=int(member.get("visits") or 0) + sum(1 for p in pending if p["visit"]),
            member_points=int(member.get("points") or 0) + sum(int(p["delta"]) for p in pending),
            member_last_day=member.get("last_day"),
            member_last_at=member.get("last_at"),
            member_last_visit_at=member.get("last_visit_at"),
        )

    def rewards(self) -> list[Reward]:
        """The catalogue the bridge last sent, in its order, with the stock left here."""
        with self._lock:
            raw = self._storage.table_data("rewards")
            docs = [raw[k] for k in sorted(raw, key=int)]
        return [Reward.model_construct(**d) for d in docs]

    def reward(self, reward_id: str) -> Reward | None:
        return next((r for r in self.rewards() if r.id == reward_id), None)

    def vouchers_left(self, now: float | None = None) -> dict[str, int]:
        """How many vouchers the pool holds that are good for `FRESH_FOR_S` more, per
        reward id (a reward whose vouchers are all about to expire is not offered)."""
        left: dict[str, int] = {}
        for doc in self._good_pooled(now):
            if doc["kind"] == "voucher":
                left[doc["reward"]] = left.get(doc["reward"], 0) + 1
        return left

    def pooled(
        self, kind: str, reward: str | None = None, now: float | None = None
    ) -> PoolCode | None:
        """A pooled code of a kind (vouchers: of `reward`) good for `FRESH_FOR_S` more,
        or None when there is none.

        The one that expires first goes first: every one of them still gives its holder
        a week or more, and a code used before it goes stale is one less left to rot in
        the pool (the bridge counts a code as unused until an event names it, so one
        that expires here is not replaced).
        """
        found = [
            doc
            for doc in self._good_pooled(now)
            if doc["kind"] == kind and (kind != "voucher" or doc["reward"] == reward)
        ]
        if not found:
            return None
        doc = min(found, key=lambda d: _pool_exp(d) or float("inf"))
        return PoolCode(id=doc["id"], code=doc["code"], url=doc.get("url"))

    def _good_pooled(self, now: float | None) -> list[dict[str, Any]]:
        """Pooled codes (in pool order) that do not expire within `FRESH_FOR_S`; codes
        already expired leave the pool here, so they are never looked at again."""
        when = self.clock() if now is None else now
        good: list[dict[str, Any]] = []
        expired: list[int] = []
        with self._lock:
            for key, doc in self._storage.table_data("pool").items():
                exp = _pool_exp(doc)
                if exp is not None and exp <= when:
                    expired.append(int(key))
                elif exp is None or exp > when + FRESH_FOR_S:
                    good.append(doc)
            if expired:
                try:
                    self._pool.remove(doc_ids=expired)
                except Exception as exc:  # reading must not fail: drop them next time
                    self._reindex()
                    log.warning("could not drop expired pool codes: %s", exc)
                else:
                    log.info("dropped %d expired codes from the pool", len(expired))
        return good

    def rated(self, event_id: str) -> bool:
        with self._lock:
            return self._rated.contains(doc_id=_doc_id(event_id, "rated"))

    def preorder(self, order: str) -> Preorder | None:
        with self._lock:
            doc = self._preorders.get(doc_id=_doc_id(order, "order"))
        return None if doc is None else _preorder(doc)

    def preorders(self, status: str | None = None) -> list[Preorder]:
        with self._lock:
            found = [_preorder(doc) for doc in self._preorders]
        return [p for p in found if status is None or p.status == status]

    def begin_load(self, order: str, locker: int) -> None:
        """Staff are about to open `locker` for `order`: hold it, durably, before the pulse.

        A kiosk that restarts while the door is open then knows the locker is taken.
        """
        with self._lock:
            try:
                with self._storage.batch():
                    self._set_preorder(order, "loading", locker)
            except Exception as exc:
                self._reindex()
                raise DBError(f"could not hold locker {locker}: {exc}") from exc

    def free_lockers(self) -> tuple[tuple[int, str], ...]:
        with self._lock:
            return tuple((d["number"], d["size"]) for d in self._lockers if d.get("order") is None)

    def locker_orders(self) -> dict[int, str | None]:
        with self._lock:
            return {d["number"]: d.get("order") for d in self._lockers}

    def member_by_phone(self, hashed: str) -> str | None:
        with self._lock:
            doc = self._phones.get(doc_id=_doc_id(hashed, "phone"))
        return doc["member_id"] if doc else None

    # --- recording outcomes ----------------------------------------------------------

    def record(self, decision: Decision, now: float) -> Recorded:
        """Write the outcome's event and its effects in one durable write."""
        with self._lock:
            try:
                with self._storage.batch():
                    event = self._write(decision, now)
            except Exception as exc:
                # The storage rolled memory back to what is on disk; so do we.
                self._reindex()
                raise DBError(f"could not record the outcome: {exc}") from exc
            self._outbox_seq[event.id] = event.seq
            if now - self._last_prune > PRUNE_EVERY_S:
                try:
                    self.prune(now)
                except (OSError, DBError) as exc:  # the outcome is safe; prune later
                    log.warning("pruning failed: %s", exc)
        return Recorded(event=event, decision=decision)

    def _write(self, decision: Decision, now: float) -> Event:
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
        doc = event.model_dump(mode="json")
        self._outbox.insert(Document(doc, doc_id=seq))
        self._history.insert(Document(doc, doc_id=seq))
        # Events never change once written: while one waits in the outbox, its history
        # entry is the same document, one copy in memory rather than two.
        outbox = self._storage.table_data("outbox")
        self._storage.table_data("history")[str(seq)] = outbox[str(seq)]
        for effect in decision.effects:
            self._apply(effect, now, event)
        return event

    def _apply(self, effect: Effect, now: float, event: Event | None = None) -> None:
        """One change, inside the caller's batch (the same durable write as its event)."""
        match effect:
            case CodeUsed():
                # Coupons and reservations share the table of used codes (pruned after
                # expiry), each in its own key space.
                key = _doc_id(effect.code_id, effect.kind)
                held = self._redeemed.get(doc_id=key)
                # A visit card's count only grows: the larger of this kiosk's uses and
                # the bridge's (other doors), never lowered by a late or repeated command.
                count = max(effect.count, int(held.get("count") or 1) if held else 0)
                if effect.keep_first and held is not None:
                    if count != int(held.get("count") or 1):
                        self._redeemed.upsert(Document({**held, "count": count}, doc_id=key))
                    return
                doc: dict[str, Any] = {"id": effect.code_id, "at": effect.at or rfc3339(now)}
                if event is not None:
                    doc.update(at=effect.at or event.ts, event=event.id, exp=effect.exp)
                else:
                    doc["kiosk"] = effect.kiosk
                if count > 1:
                    doc["count"] = count
                self._redeemed.upsert(Document(doc, doc_id=key))
            case CodeRevoked():
                key = _doc_id(effect.code_id, REVOKED)
                self._revoked.upsert(Document({"id": effect.code_id, "at": effect.at}, key))
            case MemberVisit():
                member = self._member_doc(effect.member_id)
                member.update(last_day=effect.day, last_at=now)
                if effect.name:
                    member["name"] = effect.name
                self._add_pending(member, event, effect.points, visit=True)
            case PointsSpent():
                member = self._member_doc(effect.member_id)
                self._add_pending(member, event, -effect.points, visit=False)
            case NewMember():
                member = self._member_doc(effect.member_id)
                member["phone_hash"] = effect.phone_hash
                self._put_member(member)
                phone = _doc_id(effect.phone_hash, "phone")
                self._phones.upsert(Document({"member_id": effect.member_id}, doc_id=phone))
            case MemberUpdate():
                member = self._member_doc(effect.member_id)
                held = member.get("version")
                if effect.version is not None and held is not None and effect.version < held:
                    # Two bridge workers may answer out of order: never set an older
                    # balance (and pending state) over a newer one.
                    log.info(
                        "member.upsert %s: version %d is older than %d, ignored",
                        effect.member_id,
                        effect.version,
                        held,
                    )
                    return
                member.update(effect.fields)
                if effect.version is not None:
                    member["version"] = effect.version
                if effect.applied is not None:
                    counted = set(effect.applied)
                    pending = member.get("pending") or []
                    member["pending"] = [p for p in pending if p["event"] not in counted]
                self._put_member(member)
            case RewardsReplaced():
                self._rewards.remove(doc_ids=[int(k) for k in self._storage.table_data("rewards")])
                for n, reward in enumerate(effect.rewards, start=1):
                    self._rewards.insert(Document(dict(reward), doc_id=n))
            case StockTaken():
                for n_key, doc in self._storage.table_data("rewards").items():
                    if doc["id"] == effect.reward_id and doc.get("stock"):
                        left = {**doc, "stock": doc["stock"] - 1}
                        self._rewards.upsert(Document(left, doc_id=int(n_key)))
            case PoolCodesAdded():
                ns = f"pool:{effect.kind}"
                for code_id, text, url in effect.codes:
                    key = _doc_id(code_id, ns)
                    if self._pool.contains(doc_id=key) or self._pool_taken.contains(doc_id=key):
                        continue  # held already, or handed out: never twice
                    exp = code_expiry(text)
                    if exp is not None and exp <= now:
                        continue  # already expired: useless to anyone
                    doc = {"kind": effect.kind, "reward": effect.reward, "id": code_id}
                    doc.update(code=text, url=url, exp=exp)
                    self._pool.insert(Document(doc, doc_id=key))
            case PoolCodeTaken():
                key = _doc_id(effect.code_id, f"pool:{effect.kind}")
                held = self._pool.get(doc_id=key)
                if held is None:
                    # Raised inside the batch: the whole write, event included, is undone.
                    raise LookupError(f"{effect.kind} code {effect.code_id} is not in the pool")
                self._pool.remove(doc_ids=[key])
                taken = {
                    "kind": effect.kind,
                    "id": effect.code_id,
                    "reward": held.get("reward"),
                    "exp": _pool_exp(held),
                    "event": event.id if event else None,
                    "at": now,
                }
                self._pool_taken.upsert(Document(taken, doc_id=key))
            case Rated():
                key = _doc_id(effect.event_id, "rated")
                self._rated.upsert(Document({"event": effect.event_id, "at": now}, doc_id=key))
            case PreorderChange():
                self._set_preorder(effect.order, effect.status, effect.locker)
            case PreorderDetails():
                key = _doc_id(effect.order, "order")
                pre: dict[str, Any] = self._preorders.get(doc_id=key) or {
                    "status": "pending",
                    "locker": None,
                }
                details = {
                    **pre,
                    "order": effect.order,
                    "size": effect.size,
                    "name": effect.name if effect.name is not None else pre.get("name"),
                    "items": effect.items if effect.items is not None else pre.get("items"),
                }
                self._preorders.upsert(Document(details, key))
            case PreorderCancelled():
                if self._preorders.contains(doc_id=_doc_id(effect.order, "order")):
                    self._set_preorder(effect.order, "cancelled", None)
            case RemoteOpenQueued():
                doc = {"locker": effect.locker, "by": effect.by, "expires": effect.expires}
                self._remote_opens.upsert(Document(doc, doc_id=effect.seq))
            case RemoteOpenSettled():
                if self._remote_opens.contains(doc_id=effect.seq):
                    self._remote_opens.remove(doc_ids=[effect.seq])

    def _member_doc(self, member_id: str) -> dict[str, Any]:
        """A member's stored document (a copy), or a new one with nothing yet."""
        key = _doc_id(member_id, CodeType.MEMBER)
        old: dict[str, Any] = self._members.get(doc_id=key) or {"visits": 0, "points": 0}
        return {**old, "id": member_id}

    def _put_member(self, member: dict[str, Any]) -> None:
        self._members.upsert(Document(member, doc_id=_doc_id(member["id"], CodeType.MEMBER)))

    def _add_pending(
        self, member: dict[str, Any], event: Event | None, delta: int, *, visit: bool
    ) -> None:
        """One own change on top of the bridge's balance, until an upsert names its event."""
        change = {"event": event.id if event else None, "delta": delta, "visit": visit}
        member["pending"] = [*(member.get("pending") or []), change][-MAX_PENDING:]
        self._put_member(member)

    def _set_preorder(self, order: str, status: str, locker: int | None) -> None:
        key = _doc_id(order, "order")
        old: dict[str, Any] = self._preorders.get(doc_id=key) or {"order": order}
        previous: int | None = old.get("locker")
        if previous is not None and previous != locker:
            self._free_locker(previous, order)
        if locker is not None:
            doc = self._lockers.get(doc_id=locker) or {"number": locker, "size": "M"}
            self._lockers.upsert(Document({**doc, "order": order}, doc_id=locker))
        self._preorders.upsert(Document({**old, "status": status, "locker": locker}, key))

    def _free_locker(self, number: int, order: str) -> None:
        doc = self._lockers.get(doc_id=number)
        if doc is not None and doc.get("order") == order:
            self._lockers.upsert(Document({**doc, "order": None}, doc_id=number))

    def _next_seq(self) -> int:
        meta = self._meta.get(doc_id=1) or {"seq": 0, "last_cmd_seq": 0}
        seq = int(meta["seq"]) + 1
        self._meta.upsert(Document({**meta, "seq": seq}, doc_id=1))
        return seq

    # --- the outbox ------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[Event]:
        """Un-acked events, oldest first."""
        return [Event.model_construct(**d) for d in self.pending_raw(limit)]

    def pending_raw(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Un-acked event envelopes as stored (oldest first; the outbox keeps seq order).

        The documents are never changed once written, so callers may read them freely.
        """
        with self._lock:
            raw = self._storage.table_data("outbox")
            if limit is None or limit >= len(raw):
                return list(raw.values())
            return list(itertools.islice(raw.values(), limit))

    def ack(self, ids: Iterable[str]) -> int:
        """Drop acked events from the outbox; returns how many left it."""
        with self._lock:
            seqs = [s for s in (self._outbox_seq.get(i) for i in set(ids)) if s is not None]
            if not seqs:
                return 0
            try:
                removed = self._outbox.remove(doc_ids=seqs)
            except Exception as exc:
                self._reindex()
                raise DBError(f"could not drop acked events: {exc}") from exc
            for i in set(ids):
                self._outbox_seq.pop(i, None)
        return len(removed)

    def outbox_size(self) -> int:
        with self._lock:
            return len(self._outbox_seq)

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent events, newest first (for staff and the self-test)."""
        with self._lock:
            raw = self._storage.table_data("history")
            keys = list(raw)[-limit:]
            return [dict(raw[k]) for k in reversed(keys)]

    def history_size(self) -> int:
        with self._lock:
            return len(self._history)

    # --- retention -------------------------------------------------------------------

    def prune(self, now: float) -> int:
        """Drop history older than `history_days` and coupons long expired.

        Un-acked events live in the outbox, which is never pruned.
        """
        cutoff = now - self.history_days * 86400
        with self._lock:
            self._last_prune = now
            old: list[int] = []
            for key, doc in self._storage.table_data("history").items():
                if parse_rfc3339(doc["ts"]).timestamp() >= cutoff:
                    break  # history is in time order: the rest is newer
                old.append(int(key))
            expired = [
                int(k)
                for k, d in self._storage.table_data("redeemed").items()
                if d.get("exp") is not None and d["exp"] < now - 86400
            ]
            # Rated events are remembered as long as the history. Handed-out codes are
            # remembered at least as long as the code could still be valid: a kiosk whose
            # commands are sent again from the start (database reset, last_cmd_seq 0)
            # receives old `pool.refill`s again, and a code forgotten too early would go
            # back into the pool and be handed out twice (see `_taken_stale`).
            remembered = {"pool_taken": self._pool_taken, "rated": self._rated}
            stale = {
                "rated": [
                    int(k) for k, d in self._storage.table_data("rated").items() if d["at"] < cutoff
                ],
                "pool_taken": [
                    int(k)
                    for k, d in self._storage.table_data("pool_taken").items()
                    if self._taken_stale(d, cutoff, now)
                ],
            }
            if old or expired or any(stale.values()):
                with self._storage.batch():
                    if old:
                        self._history.remove(doc_ids=old)
                    if expired:
                        self._redeemed.remove(doc_ids=expired)
                    for name, keys in stale.items():
                        if keys:
                            remembered[name].remove(doc_ids=keys)
                log.info("pruned %d old events and %d expired coupons", len(old), len(expired))
        return len(old) + len(expired) + sum(len(v) for v in stale.values())

    def _taken_stale(self, taken: dict[str, Any], cutoff: float, now: float) -> bool:
        """Whether a handed-out code's record may go: older than the history and expired.

        A code without expiry stays valid: a member code's id is kept as long as its
        member's document is here (members are never pruned), any other as long as the
        history; one with an expiry until it has passed (no refill can bring it back then:
        expired codes never enter the pool).
        """
        if taken["at"] >= cutoff:
            return False
        exp = taken.get("exp")
        if taken["kind"] == "member" and self._members.contains(
            doc_id=_doc_id(taken["id"], CodeType.MEMBER)
        ):
            return False
        return exp is None or exp < now

    # --- commands from the bridge ----------------------------------------------------

    @property
    def last_cmd_seq(self) -> int:
        with self._lock:
            meta = self._meta.get(doc_id=1)
            return int(meta.get("last_cmd_seq", 0)) if meta else 0

    def apply_changes(
        self, changes: Iterable[Effect], now: float, *, cmd_seq: int | None = None
    ) -> bool:
        """Apply changes that come with no event, in one durable write.

        With `cmd_seq` they are a command's (`kiosk.commands.apply_command`): applied
        once and in order, the seq recorded in the same write; False for a repeat or an
        out-of-order one.
        """
        with self._lock:
            if cmd_seq is not None and cmd_seq != self.last_cmd_seq + 1:
                return False
            try:
                with self._storage.batch():
                    for change in changes:
                        self._apply(change, now)
                    if cmd_seq is not None:
                        meta = self._meta.get(doc_id=1) or {"seq": 0}
                        self._meta.upsert(Document({**meta, "last_cmd_seq": cmd_seq}, doc_id=1))
            except Exception as exc:
                self._reindex()
                what = f"command {cmd_seq}" if cmd_seq is not None else "a change"
                raise DBError(f"could not apply {what}: {exc}") from exc
            return True

    def remote_opens(self) -> list[RemoteOpenQueued]:
        """Remote opens the bridge asked for that have not run yet, oldest first."""
        with self._lock:
            raw = self._storage.table_data("remote_opens")
            return [
                RemoteOpenQueued(int(k), d["locker"], d["by"], d.get("expires"))
                for k, d in sorted(raw.items(), key=lambda kv: int(kv[0]))
            ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


def code_expiry(text: str) -> int | None:
    """A pre-signed code's `exp`, read without verifying (the bridge signed it; the
    kiosk only needs to know when it stops being useful); None without one."""
    payload = decode_unverified(extract_token(text))
    return None if isinstance(payload, Rejected) else payload.exp


def _pool_exp(doc: dict[str, Any]) -> int | None:
    """A pool document's expiry; read from its code for documents stored before `exp`."""
    if "exp" in doc:
        exp: int | None = doc["exp"]
        return exp
    return code_expiry(doc["code"])


def _preorder(doc: dict[str, Any]) -> Preorder:
    return Preorder(
        order=doc["order"],
        status=doc.get("status", "pending"),
        size=doc.get("size", "M"),
        name=doc.get("name"),
        locker=doc.get("locker"),
    )


def _lock_dir(data_dir: Path) -> int:
    """One process per store: a second kiosk on the same data would redeem coupons twice."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / "kiosk.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DBError(f"{data_dir}: cannot open the kiosk database ({exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DBError(f"{data_dir} is in use by another kiosk process") from None
    return fd

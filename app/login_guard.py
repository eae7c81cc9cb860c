"""The sign-in's defences, in the order a login meets them (used by :meth:`app.service.AppService.login`):

1. **Back-off before any hashing.** Failed sign-ins are counted per reader name (``user:<name>``, known or not) and
   per client address (``addr:<host>``) in the database table ``login_attempts``, so every process and a restart see
   the same counts. After the free failures of its :class:`BackoffPolicy` (5 per name, 20 per address: a reading room
   may share one address) a key must wait ``2^k`` seconds (capped) — an attempt inside the wait is answered 429 with
   ``Retry-After`` without looking at the password. A successful sign-in clears its name's count (not the address's:
   signing in to one's own account must not reset a guessing address). Waits are cached in memory (a wait only ever
   grows until it ends), so a flood of refused attempts costs no database read.
2. **Bounded, low-priority hashing.** The scrypt check runs on :class:`HashGate`'s threads (1 by default, at nice 10),
   never on the event loop; when more are queued than it allows the attempt is answered 503 with ``Retry-After``.
   The back-off is checked again just before the hash (a wait may have begun while the attempt queued).
3. **The same work for unknown names**: :meth:`Store.verify_login` checks a dummy hash of the same parameters.
4. **An audit record per attempt** (``login_ok``, ``login_failed``, ``login_throttled``, ``login_busy``) in
   ``audit_log``, written in batches by one thread so that a flood is not one fsync per request.

Client address: the socket peer (``request.client.host``). Behind a reverse proxy every reader would share the proxy's
address; a ``--trusted-proxy`` setting (read ``X-Forwarded-For`` only from that proxy) would then be needed — it is not
implemented, and ``X-Forwarded-For`` is never trusted.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime

from annotations_db.security import AuditRecord, BackoffPolicy, HashBusy, HashGate, dummy_hash
from annotations_db.store import ReaderRef, Store

log = logging.getLogger("biascare.login")

USER_KEY, ADDRESS_KEY = "user:", "addr:"
BUSY_RETRY_S = 1.0
CACHE_LIMIT = 10_000


class Throttled(Exception):
    """A sign-in refused before its password was looked at: 429 (back-off) or 503 (hashing queue full)."""

    def __init__(self, message: str, retry_after_s: float, status: int = 429) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status

    @property
    def retry_after(self) -> int:
        """Whole seconds for the ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(self.retry_after_s))


@dataclass(frozen=True)
class Attempt:
    """Who tried: the name typed, the client address, the user agent (for the audit log and the keys)."""

    name: str
    address: str | None
    user_agent: str | None


@dataclass
class LoginPolicy:
    """The back-off of reader names and of client addresses."""

    user: BackoffPolicy = field(default_factory=BackoffPolicy)
    address: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free_failures=20))


class AuditWriter:
    """One thread appending audit records in batches; :meth:`flush` waits until everything queued is written.

    The queue is bounded: records beyond it are counted and written as one ``audit_dropped`` record."""

    def __init__(self, store: Store, capacity: int = 10_000, batch: int = 500) -> None:
        self.store, self.batch = store, batch
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(capacity)
        self._cond = threading.Condition()
        self._pending = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="biascare-audit", daemon=True)
        self._thread.start()

    def put(self, record: AuditRecord) -> None:
        with self._cond:
            try:
                self._queue.put_nowait(record)
                self._pending += 1
            except queue.Full:
                self._dropped += 1

    def _take(self) -> tuple[list[AuditRecord], bool]:
        """The next batch (waits for its first record) and whether the writer should stop after it."""
        first = self._queue.get()
        if first is None:
            return [], True
        records = [first]
        while len(records) < self.batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return records, True
            records.append(item)
        return records, False

    def _run(self) -> None:
        while True:
            records, stop = self._take()
            with self._cond:
                dropped, self._dropped = self._dropped, 0
            extra = [AuditRecord(self.store.now(), "audit_dropped", detail=f"{dropped} records")] if dropped else []
            try:
                self.store.write_audit(records + extra)
            except Exception:  # the audit trail must not take sign-ins down with it
                log.exception("could not write %d audit records", len(records))
            finally:
                with self._cond:
                    self._pending -= len(records)
                    self._cond.notify_all()
            if stop:
                return

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record queued so far is written (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending <= 0, timeout)

    def close(self) -> None:
        self.flush(timeout=10)
        self._queue.put(None)


class LoginGuard:
    """Back-off, bounded hashing and audit around :meth:`Store.verify_login` (see the module docstring)."""

    def __init__(self, store: Store, policy: LoginPolicy | None = None, *, hash_concurrency: int = 1,
                 hash_waiting: int = 4, hash_nice: int = 10) -> None:
        self.store = store
        self.policy = policy or LoginPolicy()
        self.gate = HashGate(hash_concurrency, hash_waiting, hash_nice)
        self.audit = AuditWriter(store)
        self._waits: dict[str, datetime] = {}  # key → end of its wait (store clock), known to this process
        self._lock = threading.Lock()
        dummy_hash()  # made now, so that the first unknown name does not cost two hashes

    def attempt(self, name: str, password: str, address: str | None = None,
                user_agent: str | None = None) -> ReaderRef | None:
        """The reader if the password is theirs, None if not; :class:`Throttled` (nothing hashed) while a key waits
        or the hashing queue is full. Every outcome is audited."""
        who = Attempt(name, address, user_agent)
        policies = self._policies(who)
        self._refuse_if_waiting(who, policies)
        try:
            reader, reader_id = self.gate.run(self._check, who, password, policies)
        except HashBusy as error:
            self._audit("login_busy", who)
            raise Throttled(str(error), BUSY_RETRY_S, status=503) from None
        if reader is not None:
            self._cleared(USER_KEY + who.name)
            self._audit("login_ok", who, reader.id)
            return reader
        ends = self.store.record_login_failure(policies)
        self._remember(ends)
        wait = max((self._left(end) for end in ends.values() if end is not None), default=0.0)
        self._audit("login_failed", who, reader_id, f"now waits {math.ceil(wait)} s" if wait > 0 else None)
        return None

    def _check(self, who: Attempt, password: str, policies: dict[str, BackoffPolicy]) -> tuple[ReaderRef | None,
                                                                                                int | None]:
        """On a hashing thread: the back-off once more (it may have begun while this attempt queued), then the hash."""
        self._refuse_if_waiting(who, policies)
        return self.store.verify_login(who.name, password)

    def _policies(self, who: Attempt) -> dict[str, BackoffPolicy]:
        keys = {USER_KEY + who.name[:150]: self.policy.user}
        if who.address:
            keys[ADDRESS_KEY + who.address[:150]] = self.policy.address
        return keys

    def _refuse_if_waiting(self, who: Attempt, policies: dict[str, BackoffPolicy]) -> None:
        wait = self._cached_wait(policies) or self._stored_wait(policies)
        if wait > 0:
            refusal = Throttled(f"too many failed sign-ins: wait {math.ceil(wait)} s before trying again", wait)
            self._audit("login_throttled", who, None, f"retry after {refusal.retry_after} s")
            raise refusal

    def _cached_wait(self, keys: dict[str, BackoffPolicy]) -> float:
        with self._lock:
            ends = [self._waits[k] for k in keys if k in self._waits]
        return max((self._left(end) for end in ends), default=0.0)

    def _stored_wait(self, keys: dict[str, BackoffPolicy]) -> float:
        ends = self.store.login_blocks(list(keys))
        self._remember(ends)
        return max((self._left(end) for end in ends.values()), default=0.0)

    def _left(self, end: datetime) -> float:
        return max(0.0, (end - self.store.now()).total_seconds())

    def _remember(self, ends: dict[str, datetime | None]) -> None:
        with self._lock:
            if len(self._waits) > CACHE_LIMIT:
                now = self.store.now()
                self._waits = {k: end for k, end in self._waits.items() if end > now}
            for key, end in ends.items():
                if end is None:
                    self._waits.pop(key, None)
                elif len(self._waits) < CACHE_LIMIT:
                    self._waits[key] = end

    def _cleared(self, key: str) -> None:
        self.store.clear_login_failures([key])
        with self._lock:
            self._waits.pop(key, None)

    def forget(self) -> None:
        """Drop this process's cached waits (after an admin cleared ``login_attempts``, or a test moved the clock)."""
        with self._lock:
            self._waits.clear()

    def _audit(self, kind: str, who: Attempt, reader_id: int | None = None, detail: str | None = None) -> None:
        self.audit.put(AuditRecord(self.store.now(), kind, who.name, reader_id, who.address, who.user_agent, detail))

    def close(self) -> None:
        self.audit.close()
        self.gate.close()

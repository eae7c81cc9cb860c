"""Salted password hashes (scrypt, from the standard library) for reader accounts; the login's defences: the same
work for unknown readers (:func:`check_password`), exponential back-off (:class:`BackoffPolicy`) and bounded,
low-priority hashing (:class:`HashGate`)."""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")

N, R, P, DKLEN = 2**14, 8, 1, 32


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` with a fresh 16-byte salt."""
    if not password:
        raise ValueError("password must not be empty")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=DKLEN)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a hash from :func:`hash_password`."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                               dklen=len(bytes.fromhex(digest)))
    return hmac.compare_digest(candidate.hex(), digest)


# -- the same work for unknown readers ------------------------------------------------------------------------------
_DUMMY: list[str] = []


def dummy_hash() -> str:
    """A hash of a random password with the current parameters (made once per process): checked when the name
    tried is unknown, so that an unknown reader costs the same scrypt pass as a known one (no user enumeration)."""
    if not _DUMMY:
        _DUMMY.append(hash_password(os.urandom(16).hex()))
    return _DUMMY[0]


def check_password(password: str, stored: str | None) -> bool:
    """:func:`verify_password` against ``stored``, or against :func:`dummy_hash` (always False) when there is no
    stored hash: the same work either way."""
    if stored is None:
        verify_password(password, dummy_hash())
        return False
    return verify_password(password, stored)


# -- back-off ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential back-off of one login key (a reader name or a client address).

    The first ``free_failures`` failures cost nothing; from then on failure ``f`` makes the key wait
    ``min(cap_s, base_s · 2^(f − free_failures))`` seconds before its next attempt is even looked at. A key with no
    failure for ``window_s`` starts again from zero (``window_s ≥ cap_s``, so a wait always ends inside the window).
    """

    free_failures: int = 5
    base_s: float = 1.0
    cap_s: float = 900.0
    window_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.free_failures < 1 or self.base_s <= 0 or self.cap_s < self.base_s or self.window_s < self.cap_s:
            raise ValueError("need free_failures ≥ 1, 0 < base_s ≤ cap_s ≤ window_s")

    def wait_s(self, failures: int) -> float:
        """Seconds the key must wait after its ``failures``-th failure (0 while under the free allowance)."""
        if failures < self.free_failures:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - self.free_failures, 60))


# -- bounded, low-priority hashing ------------------------------------------------------------------------------------
class HashBusy(Exception):
    """More password checks are waiting than :class:`HashGate` lets queue."""


class HashGate:
    """Runs password checks on ``concurrency`` dedicated threads at niceness ``nice`` (Linux: per thread), with at
    most ``max_waiting`` more queued; beyond that :meth:`run` raises :class:`HashBusy` at once.

    scrypt releases the GIL and costs ~50 ms of one core: run inline on the event loop, a flood of logins stalls every
    request; on unbounded threads it takes every core. One low-priority thread on a 2-core machine leaves the readers'
    clicks a core and the scheduler's preference on the other.
    """

    def __init__(self, concurrency: int = 1, max_waiting: int = 4, nice: int = 10) -> None:
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("need concurrency ≥ 1 and max_waiting ≥ 0")
        self.concurrency, self.max_waiting, self.nice = concurrency, max_waiting, nice
        self._lock = threading.Lock()
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="biascare-hash", initializer=self._lower)

    def _lower(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except (OSError, AttributeError):  # not Linux, or not allowed: the bound on concurrency still holds
            pass

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a hashing thread, waiting for a free one; :class:`HashBusy` when the queue is full."""
        with self._lock:
            if self._in_flight >= self.concurrency + self.max_waiting:
                raise HashBusy("too many sign-ins at once, retry in a moment")
            self._in_flight += 1
        try:
            return self._pool.submit(fn, *args).result()
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- audit ------------------------------------------------------------------------------------------------------------
AUDIT_KINDS = ("login_ok", "login_failed", "login_throttled", "login_busy", "audit_dropped")


@dataclass(frozen=True)
class AuditRecord:
    """One row of the security audit log (``audit_log``): what happened, to which name, from where. Never a password."""

    at: datetime
    kind: str
    user_name: str | None = None
    reader_id: int | None = None
    address: str | None = None
    user_agent: str | None = None
    detail: str | None = None
    id: int | None = None

    def row(self) -> dict[str, Any]:
        """The insert values, each cut to its column's width."""
        return {"at": self.at, "kind": self.kind, "user_name": _cut(self.user_name, 128), "reader_id": self.reader_id,
                "address": _cut(self.address, 64), "user_agent": _cut(self.user_agent, 256),
                "detail": _cut(self.detail, 200)}


def _cut(text: str | None, width: int) -> str | None:
    return None if text is None else text[:width]

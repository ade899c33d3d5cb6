"""Rate limits exact across the worker processes of one server, without Redis: GCRA in shared memory.

``superollama serve --workers N`` forks its workers from one master. The master makes a
``SharedLimitTable`` before the fork: an anonymous shared mapping (``MAP_SHARED | MAP_ANONYMOUS``, so every
child sees the same bytes) holding a fixed-size open-addressing hash table and a process-shared *robust*
mutex. Each worker's ``SharedMemoryRateLimiter`` runs the same GCRA as ``MemoryRateLimiter`` (same
numbers, same headers, same errors: the unit tests replay one sequence through both) with its buckets in
that table, every admission and settlement one critical section of a few microseconds, never across an
``await``.

Layout: a 64-byte header, the ``pthread_mutex_t`` (64 bytes reserved), then ``slots`` slots of 24 bytes::

    hash   u64   64-bit BLAKE2b of the store key (0: an empty slot)
    value  f64   a bucket's TAT, or a spend total in USD
    until  f64   when the slot means nothing any more: a bucket's TAT itself (a TAT in the past is a
                 full bucket, the same as no entry), the end of a spend period (+inf: never)

Linear probing; an expired slot is reused by the next insert that passes it, and a sweep cursor clears a
few slots per admission (Knuth's algorithm R: deletion by backward shift, no tombstones), so lookups stay
short whatever the number of keys seen. A full table admits unchecked (``degraded``) and logs it.

Robustness: the mutex is ``PTHREAD_MUTEX_ROBUST``. A worker killed (SIGKILL) inside the critical section
hands the lock to the next process with ``EOWNERDEAD``; it marks the mutex consistent and goes on (at
worst one bucket update of the dead worker is lost). Linux (glibc) only, like the worker processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import math
import mmap
import struct
import time
from collections.abc import Callable, Iterator

from superollama.security.keys import Principal
from superollama.security.limits import (
    EPOCH,
    WINDOW,
    Admission,
    AdmitsSoon,
    Plans,
    SettlesSoon,
    quota_error,
    rate_limited,
    settled_tat,
    spend_key,
)

__all__ = ["DEFAULT_SLOTS", "SharedLimitTable", "SharedMemoryRateLimiter", "TableFull"]

log = logging.getLogger("superollama.security.shared_limits")

DEFAULT_SLOTS = 1 << 16  # 1.5 MiB: room for ~10k keys with every kind of limit at once
_MAGIC = b"SOLIMIT1"
_HEADER = 64
_MUTEX_AT = 64
_MUTEX_SIZE = 64  # sizeof(pthread_mutex_t) is 40 on x86-64 and aarch64 glibc
_SLOTS_AT = _HEADER + _MUTEX_SIZE
_SLOT = struct.Struct("<Qdd")
_U64 = struct.Struct("<Q")
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1
_SWEEP_STEP = 8  # slots examined per admission
_INF = math.inf


class TableFull(Exception):
    """No free slot left in the shared table (after a full sweep)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class _RobustMutex:
    """A process-shared robust ``pthread_mutex_t`` at ``address`` (inside the shared mapping)."""

    def __init__(self, address: int, *, init: bool) -> None:
        self._libc = libc = _libc()
        self._ptr = ctypes.c_void_p(address)
        self._lock = libc.pthread_mutex_lock
        self._unlock = libc.pthread_mutex_unlock
        self._consistent = libc.pthread_mutex_consistent
        if init:
            attr = ctypes.create_string_buffer(64)  # pthread_mutexattr_t is 4 bytes on glibc
            _check(libc.pthread_mutexattr_init(attr), "pthread_mutexattr_init")
            _check(libc.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED), "setpshared")
            _check(libc.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST), "setrobust")
            _check(libc.pthread_mutex_init(self._ptr, attr), "pthread_mutex_init")
            libc.pthread_mutexattr_destroy(attr)

    def acquire(self) -> None:
        code = self._lock(self._ptr)
        if code == errno.EOWNERDEAD:
            # The holder died inside its critical section: the table is usable (one update may be lost).
            log.warning("a worker died holding the rate-limit lock: recovered")
            _check(self._consistent(self._ptr), "pthread_mutex_consistent")
        elif code != 0:
            raise OSError(code, f"pthread_mutex_lock: {errno.errorcode.get(code, code)}")

    def release(self) -> None:
        _check(self._unlock(self._ptr), "pthread_mutex_unlock")


def _check(code: int, what: str) -> None:
    if code != 0:
        raise OSError(code, f"{what}: {errno.errorcode.get(code, code)}")


def key_hash(key: str) -> int:
    """The 64-bit hash a store key is kept under (never 0: 0 marks an empty slot)."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h or 1


class SharedLimitTable:
    """The shared mapping: header, robust mutex, slots. Make it *before* forking the processes that share
    it; each of them then builds its ``SharedMemoryRateLimiter`` on it."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        if slots < 16:
            raise ValueError("a shared limit table needs at least 16 slots")
        self.slots = slots
        self._mm = mmap.mmap(-1, _SLOTS_AT + slots * _SLOT.size)  # MAP_SHARED | MAP_ANONYMOUS
        self._mm[0:8] = _MAGIC
        _U64.pack_into(self._mm, 8, slots)
        self._view = (ctypes.c_char * len(self._mm)).from_buffer(self._mm)
        self._mutex = _RobustMutex(ctypes.addressof(self._view) + _MUTEX_AT, init=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the table's process-shared lock (keep the block short and free of awaits)."""
        self._mutex.acquire()
        try:
            yield
        finally:
            self._mutex.release()

    # -- slot access (call with the lock held) -----------------------------------------------------
    def _slot(self, i: int) -> tuple[int, float, float]:
        h, value, until = _SLOT.unpack_from(self._mm, _SLOTS_AT + i * _SLOT.size)
        return int(h), float(value), float(until)

    def _write(self, i: int, h: int, value: float, until: float) -> None:
        _SLOT.pack_into(self._mm, _SLOTS_AT + i * _SLOT.size, h, value, until)

    def get(self, h: int, now: float) -> float | None:
        """The live value under ``h`` (None: absent or expired)."""
        i = h % self.slots
        for _ in range(self.slots):
            sh, value, until = self._slot(i)
            if sh == 0:
                return None
            if sh == h:
                return value if until > now else None
            i = (i + 1) % self.slots
        return None

    def put(self, h: int, value: float, until: float, now: float) -> None:
        """Set ``h`` (reusing the first expired slot on its probe path when it is new); ``TableFull``."""
        try:
            self._put(h, value, until, now)
        except TableFull:
            self.sweep(now, self.slots)  # rare: clear every expired slot, then try once more
            self._put(h, value, until, now)

    def _put(self, h: int, value: float, until: float, now: float) -> None:
        i = h % self.slots
        reuse: int | None = None
        for _ in range(self.slots):
            sh, _value, sunt = self._slot(i)
            if sh == h:
                self._write(i, h, value, until)
                return
            if sh == 0:
                self._write(reuse if reuse is not None else i, h, value, until)
                return
            if reuse is None and sunt <= now:
                reuse = i
            i = (i + 1) % self.slots
        if reuse is None:
            raise TableFull(f"the shared rate-limit table is full ({self.slots} slots)")
        self._write(reuse, h, value, until)

    def sweep(self, now: float, count: int = _SWEEP_STEP) -> None:
        """Empty up to ``count`` slots' worth of expired entries at the rolling cursor."""
        cursor = _U64.unpack_from(self._mm, 16)[0] % self.slots
        for _ in range(min(count, self.slots)):
            h, _value, until = self._slot(cursor)
            if h != 0 and until <= now:
                self._delete(cursor)  # the slot may now hold a moved entry: look at it again next time
            cursor = (cursor + 1) % self.slots
        _U64.pack_into(self._mm, 16, cursor)

    def _delete(self, i: int) -> None:
        """Knuth's algorithm R: empty slot ``i`` and shift back the entries whose probe path crossed it."""
        n = self.slots
        j = i
        for _ in range(n - 1):  # a full table has no empty slot to stop at
            j = (j + 1) % n
            h, value, until = self._slot(j)
            if h == 0:
                break
            home = h % n
            # the entry at j may move to i unless its home lies cyclically in (i, j]
            stays = (i < home <= j) if i <= j else (home > i or home <= j)
            if not stays:
                self._write(i, h, value, until)
                i = j
        self._write(i, 0, 0.0, 0.0)

    def live(self, now: float) -> int:
        """How many slots hold a live entry (tests, diagnostics)."""
        return sum(1 for i in range(self.slots) if (s := self._slot(i))[0] != 0 and s[2] > now)


class SharedMemoryRateLimiter(AdmitsSoon, SettlesSoon):
    """``RateLimiter`` on a ``SharedLimitTable``: the ``MemoryRateLimiter`` algorithm, exact across the
    processes that share the table. ``clock`` returns ``time.time()`` seconds (injectable for tests)."""

    def __init__(self, table: SharedLimitTable, *, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._clock = clock
        self._full_logged_at = -_INF
        self._plans: Plans[int] = Plans(key_hash)  # the buckets' slots, hashed once per key and model

    def _now(self) -> float:
        return self._clock() - EPOCH

    def admit_soon(self, principal: Principal, model: str, estimated_tokens: int) -> Admission:
        now = self._now()
        reserved = max(0, estimated_tokens)
        plan = self._plans.get(principal, model)
        buckets = plan.charge(estimated_tokens)
        hashes = plan.keys
        table = self._table
        try:
            with table.locked():
                if principal.budget_usd is not None:
                    spent = self._spent(principal, now)
                    if spent >= principal.budget_usd:
                        raise quota_error(principal, spent)
                if not buckets:
                    return Admission(model, principal, reserved)
                tats = [table.get(h, now) for h in hashes]
                olds = [now if t is None else t for t in tats]
                new = [max(t, now) + b.cost * b.interval for b, t in zip(buckets, olds, strict=True)]
                if any(n - now > WINDOW + b.slack for b, n in zip(buckets, new, strict=True)):
                    raise rate_limited(plan, buckets, olds, now)
                for h, tat in zip(hashes, new, strict=True):
                    table.put(h, tat, tat, now)
                table.sweep(now)
        except TableFull as exc:
            self._full(exc)
            return Admission(model, principal, reserved, degraded=True)
        return Admission(model, principal, reserved, buckets, plan.headers(new, now))

    def settle_soon(self, admission: Admission, actual_tokens: int, *, cost: float = 0.0) -> None:
        if admission.degraded:
            return
        now = self._now()
        table = self._table
        # the admission's buckets are its plan's, in order (the same key and model make the same plan)
        hashes = self._plans.get(admission.principal, admission.model).keys if admission.principal else ()
        try:
            with table.locked():
                for h, bucket in zip(hashes, admission.buckets, strict=True):
                    delta = max(0, actual_tokens) - bucket.cost if bucket.kind == "tokens" else 0
                    if delta == 0:
                        continue
                    new = settled_tat(table.get(h, now), now, delta, bucket.interval)
                    if new is None:
                        continue
                    table.put(h, new, new, now)  # a TAT in the past is a full bucket: it expires at once
                if cost > 0 and admission.principal is not None:
                    self._add_spend(admission.principal, cost, now)
        except TableFull as exc:
            self._full(exc)

    async def add_spend(self, principal: Principal, amount: float) -> float:
        now = self._now()
        try:
            with self._table.locked():
                return self._add_spend(principal, amount, now)
        except TableFull as exc:
            self._full(exc)
            return 0.0

    async def spent(self, principal: Principal) -> float:
        now = self._now()
        with self._table.locked():
            return self._spent(principal, now)

    def _spent(self, principal: Principal, now: float) -> float:
        key, _ = spend_key(principal, now)
        value = self._table.get(key_hash(key), now)
        return 0.0 if value is None else value

    def _add_spend(self, principal: Principal, amount: float, now: float) -> float:
        key, ttl = spend_key(principal, now)
        h = key_hash(key)
        total = (self._table.get(h, now) or 0.0) + amount
        self._table.put(h, total, now + ttl if ttl else _INF, now)
        return total

    def _full(self, exc: TableFull) -> None:
        now = time.monotonic()
        if now - self._full_logged_at >= 10:
            self._full_logged_at = now
            log.warning("%s: admitting unchecked", exc)

    async def close(self) -> None:
        """Nothing to do: the table outlives one worker (its master unmaps it)."""

"""Rate-limited warnings and errors: a flood of identical records (a traceback per refused connection, a warning per
malformed request) must not fill the disk or drown the one line that matters.

Per distinct message (logger, level, text, exception type), the first BURST records in an INTERVAL pass; the rest
are counted, and the next record of that message after the interval (or :meth:`RateLimit.flush` at exit, or the
periodic sweep) is preceded by one line ``suppressed N similar messages in the last S s: <message>``. Records below
WARNING always pass. The number of distinct messages tracked is bounded: beyond MAX_KEYS, new ones share a key.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

__all__ = ["RateLimit", "install", "uninstall", "LOGGERS"]

LOGGERS = ("asyncio", "uvicorn.error", "passthru.agent")  # the ones that spam under abuse
_SUMMARY = "_passthru_ratelimit_summary"


class RateLimit(logging.Filter):
    BURST = 5
    INTERVAL = 60.0
    MAX_KEYS = 1000

    def __init__(self, burst: int = BURST, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.interval, self.clock = burst, interval, clock
        self._lock = threading.Lock()
        self._seen: dict[tuple, list] = {}  # key -> [window start, count, suppressed, logger name, level, text]
        self._swept = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, _SUMMARY, False):
            return True
        try:
            text = record.getMessage()[:200]
        except Exception:  # noqa: BLE001 - a bad format string is the handler's to report, not the filter's
            text = str(record.msg)[:200]
        key = (record.name, record.levelno, text, record.exc_info[0] if record.exc_info else None)
        now = self.clock()
        due: list[list] = []
        with self._lock:
            if key not in self._seen and len(self._seen) >= self.MAX_KEYS:
                key = (record.name, record.levelno, "(other messages)", None)
            e = self._seen.get(key)
            if e is None or now - e[0] >= self.interval:
                if e is not None and e[2]:
                    due.append(list(e))
                self._seen[key] = e = [now, 0, 0, record.name, record.levelno, text]
            e[1] += 1
            passed = e[1] <= self.burst
            if not passed:
                e[2] += 1
            if now - self._swept >= 1.0:
                due += self._expired(now, skip=key)
        self._report(due, now)
        return passed

    def _expired(self, now: float, skip: tuple | None = None) -> list[list]:
        """Windows over with suppressed records (their reports are due); forgotten. Lock held."""
        self._swept = now
        out = []
        for k in [k for k, e in self._seen.items() if now - e[0] >= self.interval and k != skip]:
            e = self._seen.pop(k)
            if e[2]:
                out.append(e)
        return out

    def _report(self, due: list[list], now: float) -> None:
        for start, _, n, name, level, text in due:
            logging.getLogger(name).log(level, "suppressed %d similar messages in the last %.0f s: %s", n,
                                        now - start, text, extra={_SUMMARY: True})

    def flush(self) -> None:
        """Report every count of suppressed records now (at exit)."""
        now = self.clock()
        with self._lock:
            due = [e for e in self._seen.values() if e[2]]
            self._seen.clear()
        self._report(due, now)


def install(names: tuple[str, ...] = LOGGERS, limiter: RateLimit | None = None) -> RateLimit:
    """One shared RateLimit on each of the loggers ``names`` (a logger's filters see the records logged to it)."""
    limiter = limiter or RateLimit()
    for name in names:
        logging.getLogger(name).addFilter(limiter)
    return limiter


def uninstall(limiter: RateLimit, names: tuple[str, ...] = LOGGERS) -> None:
    for name in names:
        logging.getLogger(name).removeFilter(limiter)

"""Killing an operation at its failpoints in-process (passthru/failpoints.py): a handler raising
:class:`fake_kernel.Crash` stands in for SIGKILL (no except-clause in passthru sees a BaseException it does not
name). Shared by the crash matrices of tests/test_crash_*.py."""

from __future__ import annotations

from typing import Callable

import pytest

from fake_kernel import Crash
from passthru import failpoints


def points(fn: Callable[[], object]) -> list[str]:
    """The failpoints ``fn`` passes, in order (it runs to the end)."""
    seen: list[str] = []
    failpoints.set_handler(seen.append)
    try:
        fn()
    finally:
        failpoints.set_handler(None)
    return seen


def crash_at(n: int, fn: Callable[[], object]) -> str:
    """Run ``fn`` and "kill" it at its ``n``-th failpoint; the name of that point."""
    count, where = 0, ""

    def handler(name: str) -> None:
        nonlocal count, where
        count += 1
        if count == n:
            where = name
            raise Crash(f"killed at point {n}: {name}")

    failpoints.set_handler(handler)
    try:
        with pytest.raises(Crash):
            fn()
    finally:
        failpoints.set_handler(None)
    return where

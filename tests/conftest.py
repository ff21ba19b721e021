"""Shared fixtures: fake host roots (sysfs, procfs, dev) built under tmp_path; see tests/sysfs_fixtures.py.

Every test outside the lab runs under tests/host_guard.py: a write to the real /sys, /proc, /dev, /etc... or a
passthru CLI subprocess aimed at the real root fails it."""

import os

import pytest

import host_guard
import pg
import sysfs_fixtures

host_guard.install()


def _guarded_phase(item: pytest.Item):
    if item.get_closest_marker("lab") is not None:
        return (yield)
    with host_guard.active(item.nodeid) as guard:
        result = yield
    if guard.seen:
        pytest.fail("\n".join(guard.seen), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    return (yield from _guarded_phase(item))


@pytest.fixture(autouse=True)
def _no_columns_from_the_shell(monkeypatch):
    """Tables fit $COLUMNS (tables.py): a narrow terminal that runs the tests must not change what they see."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def gpu_server(tmp_path):
    return sysfs_fixtures.gpu_server(tmp_path / "gpu_server")


@pytest.fixture
def broken_desktop(tmp_path):
    return sysfs_fixtures.broken_desktop(tmp_path / "broken_desktop")


@pytest.fixture
def bare_host(tmp_path):
    return sysfs_fixtures.bare_host(tmp_path / "bare_host")


# -- a real PostgreSQL (tests/pg.py): one server per test session, one database per test -------------------------
def _pg_required() -> bool:
    return bool(os.environ.get("PASSTHRU_LAB_REQUIRED") or os.environ.get("CI"))


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server, started on first use and stopped at the end. Skipped when PostgreSQL or
    psycopg is missing, except in CI (PASSTHRU_LAB_REQUIRED or CI set), where that fails: CI never skips these."""
    import importlib.util

    server = pg.PgServer.find()
    problem = None
    if server is None:
        problem = f"PostgreSQL is not installed; {pg.MISSING_FIX}"
    elif importlib.util.find_spec("psycopg") is None:
        problem = "psycopg is not installed; pip install -e '.[test]' (scripts/install.sh --test)"
    if problem:
        if server is not None:
            server.cleanup()
        if _pg_required():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh database of its own on the session's server."""
    return pg_server.create_database()

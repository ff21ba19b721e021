"""Shared fixtures: fake host roots (sysfs, procfs, dev) built under tmp_path; see tests/sysfs_fixtures.py.

Every test outside the lab runs under tests/host_guard.py: a write to the real /sys, /proc, /dev, /etc... or a
passthru CLI subprocess aimed at the real root fails it."""

import pytest

import host_guard
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

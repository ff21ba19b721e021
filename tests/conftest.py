"""Shared fixtures: fake host roots (sysfs, procfs, dev) built under tmp_path; see tests/sysfs_fixtures.py."""

import pytest

import sysfs_fixtures


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

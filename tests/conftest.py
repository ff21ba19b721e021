"""Shared fixtures: fake host roots (sysfs, procfs, dev) built under tmp_path; see tests/sysfs_fixtures.py."""

import pytest

import sysfs_fixtures


@pytest.fixture
def gpu_server(tmp_path):
    return sysfs_fixtures.gpu_server(tmp_path / "gpu_server")


@pytest.fixture
def broken_desktop(tmp_path):
    return sysfs_fixtures.broken_desktop(tmp_path / "broken_desktop")


@pytest.fixture
def bare_host(tmp_path):
    return sysfs_fixtures.bare_host(tmp_path / "bare_host")

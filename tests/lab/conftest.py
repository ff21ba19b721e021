"""pytest wiring of the real-kernel lab (see README.md in this directory).

Fixtures:
- ``lab`` (session): the built lab (:class:`tests.lab.vm.Lab`); ``lab.run(script)`` boots a guest of its own.
  Skipped when ``qemu-system-x86_64`` is missing, unless ``PASSTHRU_LAB_REQUIRED`` is set (CI): then it fails.
- ``guest``: the results of the calling test's ``@in_guest(...)`` step (:class:`tests.lab.guest.GuestRun`); all
  selected steps of one boot name run in one guest boot.
- ``lab_host_cli``: runs ``python -m passthru`` of the lab's venv on the host (for replaying guest captures).

Every test in this directory gets the ``lab`` marker (``pytest -m lab`` / ``-m "not lab"``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from .guest import Boots, BOOT_OVERHEAD, guest_spec
from .vm import DEFAULT_TIMEOUT, QEMU, Lab, LabError

REQUIRED_ENV = "PASSTHRU_LAB_REQUIRED"
LAB_DIR = Path(__file__).parent
BUILD_ALLOWANCE = 900  # seconds a first build (one kernel download) may add to the first lab test


def _required() -> bool:
    return os.environ.get(REQUIRED_ENV, "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    boots: dict[str, float] = {}
    for item in items:
        spec = guest_spec(item)
        if spec is not None:
            boots[spec.boot] = boots.get(spec.boot, BOOT_OVERHEAD) + spec.timeout + 5
    has_timeout = config.pluginmanager.hasplugin("timeout")
    for item in items:
        if LAB_DIR not in Path(str(item.path)).parents:
            continue
        item.add_marker(pytest.mark.lab)
        spec = guest_spec(item)
        if has_timeout and item.get_closest_marker("timeout") is None:
            # the first test of a boot pays for the whole boot, and the first lab test maybe for the first build
            budget = boots[spec.boot] if spec is not None else DEFAULT_TIMEOUT + 60
            item.add_marker(pytest.mark.timeout(budget + BUILD_ALLOWANCE))


@pytest.fixture(scope="session")
def lab() -> Lab:
    if shutil.which(QEMU) is None:
        reason = f"{QEMU} not found (apt-get install qemu-system-x86); the real-kernel lab cannot run"
        if _required():
            pytest.fail(f"{reason}, and {REQUIRED_ENV} is set", pytrace=False)
        pytest.skip(reason)
    try:
        return Lab.create()
    except LabError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def lab_boots(lab: Lab, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Boots:
    return Boots(lab, list(request.session.items), lambda name: tmp_path_factory.mktemp(name))


@pytest.fixture
def guest(request: pytest.FixtureRequest, lab_boots: Boots):
    return lab_boots.run_for(request.node)


@pytest.fixture
def lab_host_cli(lab: Lab) -> Callable[..., subprocess.CompletedProcess]:
    """``lab_host_cli("--root", DIR, "devices", "--json")``: the venv's passthru, run on the host."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        python = lab.venv / "bin" / "python"
        env = {k: v for k, v in os.environ.items() if k != "PASSTHRU_ROOT"}
        return subprocess.run([str(python), "-m", "passthru", *args], capture_output=True, text=True,
                              timeout=timeout, check=False, env=env)

    return run

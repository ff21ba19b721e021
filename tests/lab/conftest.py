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
JOBS_ENV = "PASSTHRU_LAB_JOBS"
BOOTS = pytest.StashKey[Boots]()
LAB_DIR = Path(__file__).parent
BUILD_ALLOWANCE = 900  # seconds a first build (one kernel download) may add to the first lab test


def _required() -> bool:
    return os.environ.get(REQUIRED_ENV, "") not in ("", "0")


def lab_jobs() -> int:
    """How many lab guests run at once: $PASSTHRU_LAB_JOBS, else 2 (one TCG guest keeps about one core busy; on a
    2-core machine the other runs a second guest, then the unit tests share both), at most 4 on bigger machines."""
    value = os.environ.get(JOBS_ENV, "")
    if value:
        return max(1, int(value))
    return min(4, max(2, (os.cpu_count() or 1) // 2))


def _in_lab(item: pytest.Item) -> bool:
    return LAB_DIR in Path(str(item.path)).parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the lab runs last: its guests boot in the background from the start (pytest_runtestloop below) while the
    # unit tests run, and its tests then only collect their steps' results
    items[:] = [it for it in items if not _in_lab(it)] + [it for it in items if _in_lab(it)]
    boots: dict[str, float] = {}
    for item in items:
        spec = guest_spec(item)
        if spec is not None:
            boots[spec.boot] = boots.get(spec.boot, BOOT_OVERHEAD) + spec.timeout + 5
    scale = lab_jobs()
    has_timeout = config.pluginmanager.hasplugin("timeout")
    for item in items:
        if not _in_lab(item):
            continue
        item.add_marker(pytest.mark.lab)
        spec = guest_spec(item)
        if has_timeout and item.get_closest_marker("timeout") is None:
            # a test may wait for its boot, which waits for a free slot behind the other boots (run `scale` at a
            # time, each step's timeout times `scale`), and the first may pay for the first build
            budget = sum(boots.values()) * scale if spec is not None else DEFAULT_TIMEOUT + 60
            item.add_marker(pytest.mark.timeout(budget + BUILD_ALLOWANCE))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Start every selected boot in the background before the first test runs (when QEMU is there at all)."""
    config = session.config
    if config.option.collectonly or shutil.which(QEMU) is None:
        return
    if not any(guest_spec(it) is not None for it in session.items):
        return
    jobs = lab_jobs()
    factory = config._tmp_path_factory  # the tmp_path_factory fixture's object
    boots = Boots(Lab.create, list(session.items), lambda name: factory.mktemp(name), jobs=jobs, scale=jobs)
    config.stash[BOOTS] = boots
    boots.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    boots = session.config.stash.get(BOOTS, None)
    if boots is not None:
        boots.shutdown()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    boots = config.stash.get(BOOTS, None)
    if boots is None or not boots.timings:
        return
    tr = terminalreporter
    tr.write_sep("=", f"lab boots ({boots.jobs} at a time; step timeouts x{boots.scale:g})")
    tr.write_line(f"{'boot':<16}{'steps':>6}{'start':>9}{'wall':>9}{'in steps':>10}{'boot+off':>10}")
    for t in sorted(boots.timings, key=lambda t: t.started):
        tr.write_line(f"{t.boot:<16}{t.steps:>6}{t.started:>8.0f}s{t.wall:>8.0f}s{t.in_steps:>9.0f}s"
                      f"{t.overhead:>9.0f}s" + (f"  FAILED: {t.error}" if t.error else "")
                      + (f"  (booted again after {t.stalls} early-boot stall(s))" if t.stalls else ""))
    end = max(t.started + t.wall for t in boots.timings)
    tr.write_line(f"all boots: {end:.0f}s from the first start to the last power-off; "
                  f"{sum(t.wall for t in boots.timings):.0f}s of guest time")


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Lab:
    boots = request.config.stash.get(BOOTS, None)
    if boots is not None:  # being built, or built, in the background
        try:
            return boots.lab
        except LabError as e:
            pytest.fail(str(e), pytrace=False)
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
    boots = request.config.stash.get(BOOTS, None)
    if boots is not None:
        return boots
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

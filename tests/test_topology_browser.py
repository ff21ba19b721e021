"""`passthru topology --html` and the agent's live `/topology` in a real browser: Debian's chromium, headless, driven
by Selenium through the system chromedriver. The page loads without console errors, every PCI function of the
gpu_server fixture is drawn (its text laid out, not just present in the file), every IOMMU group has a frame in its
verdict's colour, the screenshot is a picture (the badge and frame colours are in it), and the agent's page reloads
itself after a hot-plug event and shows the new driver.

Skipped when chromium, chromedriver or selenium is missing, except in CI (CI or PASSTHRU_LAB_REQUIRED set), where
that fails: `bash scripts/install.sh --test` installs them."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import pytest

import sysfs_fixtures as fx
from passthru.service.session import Session
from passthru.service.topology_svg import COLOURS

pytestmark = pytest.mark.timeout(180)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MISSING_FIX = "bash scripts/install.sh --test (apt-get install chromium chromium-driver; pip install -e '.[test]')"


def _required() -> bool:
    """CI never skips (the rule of tests/conftest.py's pg_server)."""
    return bool(os.environ.get("PASSTHRU_LAB_REQUIRED") or os.environ.get("CI"))


@pytest.fixture(scope="module")
def browser():
    import importlib.util

    problem = None
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        problem = "chromium is not installed"
    elif not (os.access(CHROMEDRIVER, os.X_OK) or shutil.which("chromedriver")):
        problem = "chromedriver is not installed (Debian: chromium-driver)"
    elif importlib.util.find_spec("selenium") is None:
        problem = "selenium is not installed"
    if problem:
        if _required():
            pytest.fail(f"{problem}; {MISSING_FIX}", pytrace=False)
        pytest.skip(f"{problem}; {MISSING_FIX}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--hide-scrollbars", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG (what chromium's screenshots are)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert head is not None
    w, h, depth, colour, _, _, interlace = head
    assert depth == 8 and interlace == 0 and colour in (2, 6), head
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        cur = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                cur[i] = (cur[i] + cur[i - bpp]) & 0xFF
        elif f == 2:
            cur = bytearray((a + b) & 0xFF for a, b in zip(cur, prev))
        elif f == 3:
            for i in range(stride):
                cur[i] = (cur[i] + ((cur[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(cur))
        prev = cur
    return w, h, rows


def colours(data: bytes) -> dict[bytes, int]:
    """RGB -> pixel count of a PNG screenshot."""
    w, h, rows = png_pixels(data)
    bpp = len(rows[0]) // w
    out: dict[bytes, int] = {}
    for r in rows:
        for i in range(0, len(r), bpp):
            px = r[i:i + 3]
            out[px] = out.get(px, 0) + 1
    return out


def rgb(hex_colour: str) -> bytes:
    return bytes.fromhex(hex_colour.lstrip("#"))


PAGE_FACTS = """
const fns = [...document.querySelectorAll('svg text.function')].map(t => {
  const b = t.getBBox(); return [t.dataset.address, t.textContent, b.width, b.height]; });
const frames = [...document.querySelectorAll('svg rect.iommu-group')].map(r =>
  [r.dataset.group, r.dataset.verdict, getComputedStyle(r).stroke, r.getBBox().height]);
return {fns: fns, frames: frames, text: document.body.innerText, title: document.title,
        generation: document.body.dataset.generation || null};
"""


def test_the_html_page_renders_every_device_and_group_in_headless_chromium(browser, tmp_path):
    root = fx.gpu_server(tmp_path / "gs")
    page = tmp_path / "topology.html"
    env = dict(os.environ, PASSTHRU_ROOT=str(root))
    p = subprocess.run([sys.executable, "-m", "passthru", "topology", "--html", str(page)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    browser.get_log("browser")  # drop anything from before
    browser.get(page.as_uri())
    facts = browser.execute_script(PAGE_FACTS)
    assert severe(browser) == []
    assert facts["title"] == "passthru topology"
    inv = Session(str(root)).inventory()
    drawn = {a: (txt, w, h) for a, txt, w, h in facts["fns"]}
    assert set(drawn) == {f.address for f in inv.pci}
    for addr, (txt, w, h) in drawn.items():
        assert txt.startswith(addr) and w > 50 and h > 5, (addr, txt, w, h)  # laid out, with a real size
    frames: dict[str, set] = {}
    for number, word, stroke, height in facts["frames"]:
        assert height > 10
        frames.setdefault(number, set()).add((word, stroke))
    assert set(frames) == {str(f.iommu_group) for f in inv.pci}  # 47 groups, 47 frames
    want = {w: "rgb({}, {}, {})".format(*rgb(COLOURS[w])) for w in ("viable", "not viable", "bridges only")}
    assert frames["11"] == {("viable", want["viable"])} and frames["10"] == {("not viable", want["not viable"])}
    assert frames["8"] == {("bridges only", want["bridges only"])}
    assert "why it cannot be passed through" in facts["text"] and "0000:18:00.0 (nvidia)" in facts["text"]
    seen = colours(browser.get_screenshot_as_png())
    assert len(seen) > 50, "the screenshot is (nearly) one colour"
    for use in ("host", "vfio", "free"):  # the driver badges are painted
        assert seen.get(rgb(COLOURS[use]), 0) > 200, (use, COLOURS[use])
    assert max(seen.values()) < 0.97 * sum(seen.values())


def test_the_agents_page_is_live_in_headless_chromium(browser, tmp_path):
    from passthru.agent.app import create_app
    from passthru.agent.events import QueueSource
    from passthru.agent.server import AgentServer, Listen

    b = fx.make_gpu_server(tmp_path / "gs")
    events = QueueSource()
    app = create_app(str(b.root), udev=events, reconcile_on_start=False, debounce=0.1)
    srv = AgentServer(app, Listen("tcp", host="127.0.0.1", port=0))
    where = srv.start()
    vf = "0000:3b:01.2"
    try:
        browser.get_log("browser")
        browser.get(f"http://127.0.0.1:{where.port}/topology")
        before = browser.execute_script(PAGE_FACTS)
        assert before["generation"] is not None and vf in dict((a, t) for a, t, _, _ in before["fns"])
        badge = "return [...document.querySelectorAll('svg text.driver')].map(t => t.textContent)"
        drivers = browser.execute_script(badge)
        # the VF's driver lets go of it (mlx5_core -> none), and the kernel says so with a uevent
        os.unlink(f"{b.root}/sys/bus/pci/devices/{vf}/driver")
        events.put("unbind", "pci", vf)
        deadline = time.monotonic() + 30
        after = before
        while after["generation"] == before["generation"]:
            assert time.monotonic() < deadline, "the page did not reload after the hot-plug event"
            time.sleep(0.3)
            after = browser.execute_script(PAGE_FACTS)
        assert int(after["generation"]) > int(before["generation"])
        now = browser.execute_script(badge)
        assert now.count("free") == drivers.count("free") + 1 and now.count("mlx5_core") == drivers.count(
            "mlx5_core") - 1
        assert severe(browser) == []
    finally:
        srv.stop()
        app.state.agent.stop()

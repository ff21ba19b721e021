"""`--root DIR` must be a host tree (issue #13): what the running host, the fixtures and an extracted capture all have,
a directory with sys/ and proc/. Anything else is one line naming what is missing, exit 2 - not an empty host with
the IOMMU off and exit 0. Verbs that only write into a root (installing units into an image) take any directory."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from passthru.capture import capture_host
from passthru.cli import main as cli_main
from passthru.service.fastpath import fast_main
from passthru.errors import UsageError
from passthru.host.root import HostRoot

from as_nobody import as_nobody


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def bad_roots(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a tree\n")
    (tmp_path / "half" / "sys").mkdir(parents=True)
    return {"missing": (tmp_path / "missing", "does not exist"), "file": (tmp_path / "file", "is not a directory"),
            "empty": (tmp_path / "empty", "is not a host tree: no sys/ and no proc/ in it"),
            "half": (tmp_path / "half", "is not a host tree: no proc/ in it")}


@pytest.mark.parametrize("argv", [["devices"], ["devices", "--json"], ["groups"], ["doctor"], ["vgpu", "types"],
                                  ["usb", "--json"], ["bind", "0000:01:00.0", "--dry-run"], ["prepare"]])
def test_a_root_that_is_not_a_host_tree_is_refused(capsys, bad_roots, argv):
    for root, says in bad_roots.values():
        rc, out, err = cli(capsys, "--root", str(root), *argv)
        assert rc == 2 and out == "" and err.count("\n") == 1, (root, argv, err)
        assert err.startswith(f"passthru: host root {root} (--root / PASSTHRU_ROOT) {says}"), err
        assert "passthru capture" in err


def test_the_json_fast_path_refuses_it_too(capsys, bad_roots):
    root, says = bad_roots["empty"]
    assert fast_main(["--root", str(root), "devices", "--json"]) == 2
    assert says in capsys.readouterr().err


def test_fixtures_and_captures_are_host_trees(capsys, gpu_server, bare_host, tmp_path):
    out = tmp_path / "c.tar.gz"
    capture_host(HostRoot(bare_host), str(out))
    with tarfile.open(out) as t:
        t.extractall(tmp_path / "replay", filter="tar")
    for root in (gpu_server, bare_host, tmp_path / "replay"):
        rc, text, _ = cli(capsys, "--root", str(root), "devices", "--json")
        assert rc == 0 and json.loads(text)["devices"], root
    HostRoot("/", check=True).check_tree()  # the running host always is one


def test_a_capture_of_a_non_tree_is_refused_and_writes_nothing(capsys, bad_roots, tmp_path):
    root, says = bad_roots["empty"]
    with pytest.raises(UsageError, match=says):
        capture_host(HostRoot(root), str(tmp_path / "c.tar.gz"))
    rc, _, err = cli(capsys, "--root", str(root), "capture", "-o", str(tmp_path / "c.tar.gz"))
    assert rc == 2 and says in err and not (tmp_path / "c.tar.gz").exists()


def test_installing_units_into_an_image_root_needs_no_host_tree(capsys, bad_roots):
    root, _ = bad_roots["empty"]
    rc, out, _ = cli(capsys, "--root", str(root), "units", "--install")
    assert rc == 0 and (root / "etc/systemd/system/passthru-apply-boot.service").exists(), out


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_root_the_user_may_not_read_says_so(gpu_server):
    """As uid 65534, the fixture (under root's 0700 pytest directory) exists but cannot be read: the message says
    so and how, instead of claiming it does not exist."""
    got = as_nobody(lambda: HostRoot(gpu_server, check=True).check_tree())
    assert got.startswith(f"UsageError: host root {gpu_server} (--root / PASSTHRU_ROOT) cannot be read "
                          "(Permission denied); run as root, or name a host tree"), got

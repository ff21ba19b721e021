"""Shell completion (issue #13): `passthru completion bash|zsh|fish` prints a script generated from the CLI's own
command tree. The bash script is valid (`bash -n`), names every command, and completes for real in bash; zsh and
fish check its syntax where they are installed. `--install-completion` points at the verb."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from passthru import __version__
from passthru.cli import command
from passthru.cli import main as cli_main
from passthru.service.fastpath import _parse_fast
from passthru.cli.completion import script, walk


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    p = subprocess.run([sys.executable, "-m", "passthru", "completion", "bash"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stderr == ""
    path = tmp_path_factory.mktemp("completion") / "passthru.bash"
    path.write_text(p.stdout)
    return path


def complete(path, *words: str) -> list[str]:
    """What bash offers for ``words`` (the last one being completed), through the script's own function."""
    quoted = " ".join(f"'{w}'" for w in words)
    prog = (f"source {path}; COMP_WORDS=(passthru {quoted}); COMP_CWORD={len(words)}; _passthru; "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


def test_the_bash_script_is_valid_and_names_every_command(bash_script):
    assert subprocess.run(["bash", "-n", str(bash_script)], capture_output=True, timeout=30).returncode == 0
    text = bash_script.read_text()
    tree = walk(command())
    assert "complete -o default -F _passthru passthru" in text and f"passthru {__version__}" in text
    for name, node in tree.children.items():
        assert f'"|{name}"' in text, name
        for sub in node.children:
            assert f'"{name}|{sub}"' in text, (name, sub)
    assert {"devices", "vgpu", "assign", "completion", "bind"} <= set(tree.children)


@pytest.mark.parametrize("words,want,unwanted", [
    (["vg"], ["vgpu"], []),
    (["vgpu", ""], ["types", "list", "create", "remove", "start-persisted", "--help"], ["devices"]),
    (["--root", "/x", "vgpu", "create", "--"], ["--uuid", "--persist", "--dry-run", "--json"], ["--root"]),
    (["assign", "vm1", "gpu", "--dr"], ["--dry-run"], []),
    (["--root", ""], [], []),  # a directory: bash's own file names (complete -o default)
    (["devices", "--kind", ""], [], []),
    (["--"], ["--root", "--config-dir", "--state-dir", "--version", "--help"], ["--json"]),
])
def test_bash_completes_the_command_path(bash_script, words, want, unwanted):
    got = complete(bash_script, *words)
    assert set(want) <= set(got) and not set(unwanted) & set(got), got
    if not want:
        assert got == []


@pytest.mark.parametrize("shell,check", [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])])
def test_zsh_and_fish_scripts_parse(tmp_path, shell, check):
    if not shutil.which(check[0]):
        pytest.skip(f"{check[0]} is not installed")
    path = tmp_path / f"passthru.{shell}"
    path.write_text(script(shell, command(), __version__))
    p = subprocess.run([*check, str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "vgpu" in path.read_text() and "start-persisted" in path.read_text()


def test_fish_completes_subcommands(tmp_path):
    if not shutil.which("fish"):
        pytest.skip("fish is not installed")
    path = tmp_path / "passthru.fish"
    path.write_text(script("fish", command(), __version__))
    p = subprocess.run(["fish", "--no-config", "-c", f"source {path}; complete -C 'passthru vgpu cr'"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("create\t"), p.stdout + p.stderr


def test_install_completion_and_unknown_shells_are_usage_errors(capsys):
    for argv in (["--install-completion"], ["--show-completion"], ["completion", "tcsh"]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("passthru completion" in err or "bash, zsh, fish" in err), err


def test_the_json_fast_path_leaves_completion_to_the_cli():
    assert _parse_fast(["completion", "bash"]) is None
    assert _parse_fast(["devices", "--json"]) == ("devices", {}, None)

"""Shell completion scripts for ``passthru``, generated from the CLI's own command tree, and the verb that prints
them, ``passthru completion SHELL``.

The scripts are static: every command, subcommand and option is written into them, so pressing TAB runs no Python
(passthru starts in a fraction of a second, but a completion that waits for it feels slow), and a script printed by
one version completes exactly that version's commands. Print it again after an upgrade.

- bash: a ``_passthru`` function for ``complete -F``. It walks the words typed so far to find the command path
  ("vgpu create"), skipping options and the values of options that take one, then offers that path's
  subcommands and options. After an option that takes a value it offers nothing, so bash completes file names
  (``complete -o default``): right for ``--root``, ``--state-dir``, ``--qmp``...
- zsh: the bash script through zsh's ``bashcompinit``.
- fish: ``complete -c passthru`` lines, conditioned on the same command path (a helper function walks the words).

Nothing is completed from the host (no PCI addresses or VM names): completion must not read sysfs or the inventory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from .. import __version__
from ..errors import UsageError

__all__ = ["SHELLS", "script", "Node", "walk", "completion"]

SHELLS = ("bash", "zsh", "fish")


@dataclass(slots=True)
class Node:
    path: str  # "" for the top level, "vgpu create"
    help: str
    children: dict[str, "Node"] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # options without a value (--json, -a)
    valued: list[str] = field(default_factory=list)  # options that take a value (--root, --kind, -k)


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0].strip().rstrip(".")


def walk(cmd: Any, path: str = "") -> Node:
    """The tree of ``cmd`` (a click command or group): subcommands, and each one's options split by whether they
    take a value. Hidden commands and options are left out; --help is everywhere."""
    node = Node(path, _first_line(getattr(cmd, "short_help", None) or getattr(cmd, "help", None)))
    for p in getattr(cmd, "params", []):
        if getattr(p, "hidden", False) or getattr(p, "param_type_name", "") != "option":
            continue
        names = [*p.opts, *p.secondary_opts]
        (node.flags if p.is_flag or getattr(p, "count", False) else node.valued).extend(names)
    node.flags.append("--help")
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            node.children[name] = walk(sub, f"{path} {name}".strip())
    return node


def _nodes(root: Node) -> list[Node]:
    out, todo = [], [root]
    while todo:
        n = todo.pop(0)
        out.append(n)
        todo.extend(n.children.values())
    return out


def _bash(root: Node, version: str) -> str:
    nodes = _nodes(root)
    valued = " | ".join(f'"{n.path}|{o}"' for n in nodes for o in n.valued) or '"|--"'
    steps = " | ".join(f'"{n.path}|{c}"' for n in nodes for c in n.children) or '"|"'
    words = "\n".join(f'        "{n.path}") words="{" ".join([*n.children, *n.valued, *n.flags])}" ;;' for n in nodes)
    return f'''# bash completion for passthru {version}, printed by `passthru completion bash`
# install: passthru completion bash > /etc/bash_completion.d/passthru   (or source it from ~/.bashrc)
_passthru() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" skip=0 i w words
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        if ((skip)); then skip=0; continue; fi
        case "$path|$w" in
            {valued}) skip=1; continue ;;
        esac
        case "$w" in -*) continue ;; esac
        case "$path|$w" in
            {steps}) path="${{path:+$path }}$w" ;;
        esac
    done
    if ((skip)); then COMPREPLY=(); return; fi  # an option's value: file names (complete -o default)
    case "$path" in
{words}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _passthru passthru
'''


def _zsh(root: Node, version: str) -> str:
    body = _bash(root, version).split("\n", 2)[2]
    return (f"#compdef passthru\n# zsh completion for passthru {version}, printed by `passthru completion zsh`\n"
            "# install: passthru completion zsh > \"${fpath[1]}/_passthru\" (then compinit), or source it from "
            "~/.zshrc\nautoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n" + body)


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(root: Node, version: str) -> str:
    nodes = _nodes(root)
    valued = " ".join(_fish_quote(f"{n.path}|{o}") for n in nodes for o in n.valued) or "''"
    steps = " ".join(_fish_quote(f"{n.path}|{c}") for n in nodes for c in n.children) or "''"
    lines = [f"# fish completion for passthru {version}, printed by `passthru completion fish`",
             "# install: passthru completion fish > ~/.config/fish/completions/passthru.fish",
             "function __passthru_path",
             "    set -l words (commandline -opc)",
             "    set -e words[1]",
             "    set -l path ''",
             "    set -l skip 0",
             "    for w in $words",
             "        if test $skip = 1",
             "            set skip 0",
             "            continue",
             "        end",
             "        if contains -- \"$path|$w\" " + valued,
             "            set skip 1",
             "            continue",
             "        end",
             "        if string match -q -- '-*' $w",
             "            continue",
             "        end",
             "        if contains -- \"$path|$w\" " + steps,
             "            set path (string trim -- \"$path $w\")",
             "        end",
             "    end",
             "    echo $skip\"|\"$path",
             "end",
             "complete -c passthru -f"]
    for n in nodes:
        cond = _fish_quote(f"test (__passthru_path) = {_fish_quote('0|' + n.path)}")
        for name, child in n.children.items():
            lines.append(f"complete -c passthru -n {cond} -a {_fish_quote(name)} -d {_fish_quote(child.help[:60])}")
        for opt in n.flags + n.valued:
            flag = f"-l {_fish_quote(opt[2:])}" if opt.startswith("--") else f"-s {_fish_quote(opt[1:])}"
            lines.append(f"complete -c passthru -n {cond} {flag}" + (" -r -F" if opt in n.valued else ""))
    return "\n".join(lines) + "\n"


def script(shell: str, cmd: Any, version: str) -> str:
    """The completion script for ``shell`` (bash, zsh, fish) of the click command ``cmd``."""
    root = walk(cmd)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](root, version)


def completion(
    ctx: typer.Context,
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish.")],
) -> None:
    """Print the shell completion script for passthru's commands and options.

    Examples: `passthru completion bash > /etc/bash_completion.d/passthru`, `source <(passthru completion bash)`,
    `passthru completion zsh > "${fpath[1]}/_passthru"`, `passthru completion fish >
    ~/.config/fish/completions/passthru.fish`.
    """
    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}; shells: {', '.join(SHELLS)}")
    sys.stdout.write(script(shell, ctx.find_root().command, __version__))

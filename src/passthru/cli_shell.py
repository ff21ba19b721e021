"""CLI verb of shell completion: ``passthru completion bash|zsh|fish`` (registered on ``cli.app``)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .cli import app
from .errors import UsageError


@app.command()
def completion(
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish.")],
) -> None:
    """Print the shell completion script for passthru's commands and options.

    Examples: `passthru completion bash > /etc/bash_completion.d/passthru`, `source <(passthru completion bash)`,
    `passthru completion zsh > "${fpath[1]}/_passthru"`, `passthru completion fish >
    ~/.config/fish/completions/passthru.fish`.
    """
    from . import __version__
    from .cli import command
    from .completion import SHELLS, script

    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}; shells: {', '.join(SHELLS)}")
    sys.stdout.write(script(shell, command(), __version__))

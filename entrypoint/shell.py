"""Procfile commands are shell lines ($PORT, &&, ;): how /bin/sh gets to run them."""

from __future__ import annotations

SHELL_OPERATORS = (";", "&", "|", "<", ">", "(", ")", "`", "\n", "$(")


def is_simple_command(command: str) -> bool:
    """True when the line is one command the shell can exec (no lists, pipes, groups)."""
    return not any(token in command for token in SHELL_OPERATORS)


def shell_line(command: str) -> str:
    """The line /bin/sh runs: a simple command is exec'd, so the app itself is the
    process supervisord watches and signals (unless the command already says exec)."""
    if not is_simple_command(command) or command.split()[:1] == ["exec"]:
        return command
    return f"exec {command}"

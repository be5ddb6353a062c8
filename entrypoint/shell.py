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


# fd 0 is the listening socket; the same socket is offered through the other doors
# common servers have: fd 3 with systemd's socket activation variables (gunicorn takes
# it instead of its --bind; LISTEN_PID is the shell's, which execs the server) and
# UVICORN_FD (uvicorn's --fd, taken over its --host/--port).
SOCKET_DOORS = "exec 3<&0; export LISTEN_FDS=1 LISTEN_PID=$$ UVICORN_FD=3; "


def socket_handoff_line(command: str) -> str:
    """The line for a web command whose listening socket is fd 0: the socket reaches
    it through every door, so the Procfile need not name it."""
    return SOCKET_DOORS + shell_line(command)

"""The README's first command: the demo shows a commit going live, end to end."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_shows_a_commit_going_live() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REPO_URL" and not k.startswith("LIVE_")}
    result = subprocess.run(
        [sys.executable, "-m", "entrypoint", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> the app answers: hello from revision" in result.stdout
    assert "==> live after" in result.stdout
    assert "hello again from revision" in result.stdout
    assert "state=running" in result.stdout
    assert "agent stopped on SIGTERM, exit code 0" in result.stdout

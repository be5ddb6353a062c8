"""A sample app in a local git repository: what the demo (and the tests) deploy.

A bare repository plays the remote; a working clone beside it makes commits and
pushes them, as a developer would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import git

APP = '''\
"""Sample app: answers every GET with its message and the revision it runs."""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = {message!r}
REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{{MESSAGE}} from revision {{REVISION}}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''
PROCFILE = "web: python app.py\n"
AUTHOR = ("live-pull demo", "demo@live-pull.invalid")


@dataclass(frozen=True)
class SampleRepo:
    remote: Path  # bare repository, the "origin"
    work: Path  # a working clone that commits and pushes

    @property
    def url(self) -> str:
        return self.remote.as_uri()

    def commit(self, files: dict[str, str], message: str, branch: str = "main") -> str:
        """Write files, commit them and push to the remote; return the new sha."""
        repo = git.Repo(self.work)
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        repo.git.add("--all")
        name, email = AUTHOR
        repo.git.commit(
            "--allow-empty",
            "-m",
            message,
            author=f"{name} <{email}>",
            env={"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email},
        )
        repo.git.push("--force", "origin", f"HEAD:refs/heads/{branch}")
        return repo.head.commit.hexsha


def app_files(message: str) -> dict[str, str]:
    return {"app.py": APP.format(message=message), "Procfile": PROCFILE}


def create_sample_repo(root: Path, message: str = "hello") -> SampleRepo:
    """A bare remote with one commit of the sample app on `main`."""
    remote = root / "sample-app.git"
    work = root / "sample-app"
    git.Repo.init(remote, bare=True, initial_branch="main")
    repo = git.Repo.init(work, initial_branch="main")
    repo.create_remote("origin", remote.as_uri())
    sample = SampleRepo(remote, work)
    sample.commit(app_files(message), "sample app")
    return sample

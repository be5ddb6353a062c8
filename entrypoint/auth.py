"""How git authenticates: credentials in REPO_URL, an HTTPS token or password, or an
SSH deploy key. Secret files are re-read before every use, so a rotated Kubernetes
Secret works without a restart.

Secrets reach git only through files live-pull writes mode 0600 under
LIVE_PULL_HOME: a credential helper reads the HTTPS ones, ssh reads the key.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from entrypoint.credentials import HttpCredentials, credential_helper_config
from entrypoint.errors import GitError
from entrypoint.files import write_private
from entrypoint.github_app import GitHubApp, GitHubAppSettings

log = logging.getLogger(__name__)

DEFAULT_TOKEN_USER = "x-access-token"
# LIVE_PULL_GIT_AUTH's words, each with what the operator sets to get that method.
AUTH_KINDS = {
    "none": "no credentials at all",
    "url": "user:token@ in an https:// or http:// REPO_URL",
    "token": "LIVE_PULL_GIT_TOKEN or LIVE_PULL_GIT_TOKEN_FILE",
    "password": "LIVE_PULL_GIT_PASSWORD or LIVE_PULL_GIT_PASSWORD_FILE",
    "ssh-key": "LIVE_PULL_SSH_KEY_FILE",
    "github-app": "LIVE_PULL_GITHUB_APP_ID, _PRIVATE_KEY_FILE and _INSTALLATION_ID",
}
AUTH_FAILURES = (
    "Authentication failed",
    "could not read Username",
    "could not read Password",
    "Permission denied (publickey",
    "Host key verification failed",
    "terminal prompts disabled",
    "HTTP Basic: Access denied",
    "The requested URL returned error: 401",
    "The requested URL returned error: 403",
    "GitHub App token request failed",
)


@dataclass(frozen=True)
class Secret:
    """A secret given inline (`NAME`) or as a file (`NAME_FILE`), read at every use."""

    variable: str
    value: str | None = field(default=None, repr=False)
    file: Path | None = None

    def read(self) -> str:
        if self.file is None:
            return self.value or ""
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise GitError(f"{self.variable}_FILE cannot be read: {exc.strerror}") from exc

    @property
    def source(self) -> str:
        return f"{self.variable}_FILE" if self.file is not None else self.variable


@dataclass(frozen=True)
class AuthSettings:
    url_credentials: HttpCredentials | None = None
    username: Secret | None = None
    token: Secret | None = None
    password: Secret | None = None
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    strict_host_keys: bool = True
    github_app: GitHubAppSettings | None = None
    origin: str | None = None  # REPO_URL's scheme://host[:port], for http(s) only

    @property
    def kind(self) -> str:
        """The method as one word: what LIVE_PULL_GIT_AUTH says, when it is set."""
        if self.github_app is not None:
            return "github-app"
        if self.url_credentials is not None:
            return "url"
        if self.token is not None:
            return "token"
        if self.password is not None:
            return "password"
        if self.ssh_key_file is not None:
            return "ssh-key"
        return "none"

    @property
    def method(self) -> str:
        """The method in words, for errors and the log (never a secret)."""
        if self.github_app is not None:
            return f"GitHub App {self.github_app.app_id} installation"
        if self.url_credentials is not None:
            return "credentials in REPO_URL"
        if self.token is not None:
            return f"HTTPS token from {self.token.source}"
        if self.password is not None:
            return f"HTTPS username and password from {self.password.source}"
        if self.ssh_key_file is not None:
            return "SSH deploy key from LIVE_PULL_SSH_KEY_FILE"
        return "none"

    def inline_secrets(self) -> list[str]:
        found = [s.value for s in (self.token, self.password) if s and s.value]
        if self.url_credentials is not None:
            found.append(self.url_credentials.password)
        return [value for value in found if value]


class GitAuth:
    """Prepares, before each git command that reaches the remote, what git needs."""

    def __init__(self, settings: AuthSettings, home: Path) -> None:
        self.settings = settings
        self.credentials_file = home / "credentials"
        self.key_copy = home / "ssh" / "deploy-key"
        app = settings.github_app
        self.github_app = GitHubApp(app) if app is not None else None
        if not settings.strict_host_keys:
            log.warning("SSH host key checking is OFF (LIVE_PULL_SSH_STRICT_HOST_KEY_CHECKING)")

    def environment(self) -> dict[str, str]:
        env = {"GIT_SSH_COMMAND": self._ssh_command()}
        credentials = self._http_credentials()
        if credentials is None or self.settings.origin is None:
            self.credentials_file.unlink(missing_ok=True)
            return env
        text = f"username={credentials.username}\npassword={credentials.password}\n"
        if not self.credentials_file.exists() or self.credentials_file.read_text() != text:
            write_private(self.credentials_file, text)
        env.update(credential_helper_config(self.credentials_file, self.settings.origin))
        return env

    def forget(self) -> None:
        """Remove the copies of secrets made for git: `live-pull prepare` leaves none
        behind (in an image layer, say)."""
        self.credentials_file.unlink(missing_ok=True)
        self.key_copy.unlink(missing_ok=True)

    def explain(self, error: GitError) -> GitError:
        """An authentication failure names the method, instead of git's raw words alone."""
        if self.settings.method != "none" and any(s in str(error) for s in AUTH_FAILURES):
            return GitError(f"authentication failed (method: {self.settings.method}): {error}")
        return error

    def _http_credentials(self) -> HttpCredentials | None:
        s = self.settings
        if self.github_app is not None:
            return HttpCredentials(DEFAULT_TOKEN_USER, self.github_app.token())
        if s.url_credentials is not None:
            return s.url_credentials
        if s.token is not None:
            user = s.username.read() if s.username else DEFAULT_TOKEN_USER
            return HttpCredentials(user or DEFAULT_TOKEN_USER, s.token.read())
        if s.password is not None:
            return HttpCredentials(s.username.read() if s.username else "", s.password.read())
        return None

    def _ssh_command(self) -> str:
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=30"]
        if self.settings.ssh_key_file is not None:
            # A copy, mode 0600: ssh refuses keys others can read, and Secrets are
            # often mounted 0644. Copied at every use, so rotation works.
            key = Secret("LIVE_PULL_SSH_KEY", file=self.settings.ssh_key_file).read()
            self.key_copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(self.key_copy, key + "\n")
            options += ["-i", str(self.key_copy), "-o", "IdentitiesOnly=yes"]
        if not self.settings.strict_host_keys:
            options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            options += ["-o", "StrictHostKeyChecking=yes"]
            if self.settings.known_hosts_file is not None:
                options += ["-o", f"UserKnownHostsFile={self.settings.known_hosts_file}"]
        return shlex.join(["ssh", *options])

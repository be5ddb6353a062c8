"""Settings: the only module that reads the environment.

One frozen pydantic-settings model, validated before any work. A bad value
becomes one ConfigError line naming the variable.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import socket
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from entrypoint import identity, tags
from entrypoint.auth import AUTH_KINDS, AuthSettings, Secret
from entrypoint.credentials import (
    REDACTED,
    RepoUrl,
    credential_origin,
    parse_repo_url,
    plain_http_elsewhere,
)
from entrypoint.errors import ConfigError
from entrypoint.github_app import GitHubAppSettings
from entrypoint.homelock import DEFAULT_HOME
from entrypoint.notify import DEFAULT_EVENTS, EVENTS, unusable
from entrypoint.verify import VerifySettings
from entrypoint.windows import UpdateWindows, parse_windows

PREFIX = "LIVE_PULL_"
# Variables live-pull sets for the app itself; seeing them is not a typo.
APP_FACING = frozenset({"LIVE_PULL_REVISION", "LIVE_PULL_ENV", "LIVE_PULL_PROCESS"})
# What Kubernetes sets in every pod: where the API server is (LIVE_PULL_FLEET_URL=kubernetes).
POD_VARIABLES = frozenset({"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"})
# Where Kubernetes mounts the pod's service account: token, ca.crt, namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Settings the app keeps seeing (REPO_URL with its credentials removed).
APP_KEEPS = frozenset({"REPO_URL", "REPO_REF", "PORT", *POD_VARIABLES})
# Variables whose value may hold a secret: never echoed, never passed to the app.
SECRET_VARIABLES = frozenset(
    {
        "REPO_URL",
        "LIVE_PULL_GIT_TOKEN",
        "LIVE_PULL_GIT_PASSWORD",
        "LIVE_PULL_WEBHOOK_SECRET",
        "LIVE_PULL_NOTIFY_URLS",
        "LIVE_PULL_FLEET_URL",
    }
)


GROUP_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True)

    repo_url: Annotated[RepoUrl, NoDecode] = Field(validation_alias=AliasChoices("REPO_URL"))
    repo_ref: str | None = Field(None, validation_alias=AliasChoices("REPO_REF"))
    home: Path = Field(Path(DEFAULT_HOME), validation_alias=AliasChoices("LIVE_PULL_HOME"))
    poll_interval: float = Field(
        30.0, ge=0, validation_alias=AliasChoices("LIVE_PULL_POLL_INTERVAL")
    )
    app_dir: str = Field("", validation_alias=AliasChoices("LIVE_PULL_APP_DIR"))
    command: str | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_COMMAND"))
    release_command: str | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_RELEASE_COMMAND")
    )
    status_host: str = Field("0.0.0.0", validation_alias=AliasChoices("LIVE_PULL_STATUS_HOST"))
    status_port: int = Field(
        8081, ge=0, le=65535, validation_alias=AliasChoices("LIVE_PULL_STATUS_PORT")
    )
    port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("PORT"))
    shared_paths: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=AliasChoices("LIVE_PULL_SHARED_PATHS")
    )
    keep_releases: int = Field(3, ge=1, validation_alias=AliasChoices("LIVE_PULL_KEEP_RELEASES"))
    depth: int = Field(1, ge=0, validation_alias=AliasChoices("LIVE_PULL_DEPTH"))
    git_timeout: float = Field(120.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_GIT_TIMEOUT"))
    start_timeout: float = Field(
        300.0, ge=0, validation_alias=AliasChoices("LIVE_PULL_START_TIMEOUT")
    )
    stop_timeout: float = Field(5.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_STOP_TIMEOUT"))
    start_seconds: int = Field(1, ge=0, validation_alias=AliasChoices("LIVE_PULL_START_SECONDS"))
    start_retries: int = Field(3, ge=0, validation_alias=AliasChoices("LIVE_PULL_START_RETRIES"))
    release_timeout: float = Field(
        600.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_RELEASE_TIMEOUT")
    )
    max_backoff: float = Field(300.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_MAX_BACKOFF"))
    lockfile: str | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_LOCKFILE"))
    install_command: str | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_INSTALL_COMMAND")
    )
    installer: Literal["auto", "uv", "pip"] = Field(
        "auto", validation_alias=AliasChoices("LIVE_PULL_INSTALLER")
    )
    install_args: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=AliasChoices("LIVE_PULL_INSTALL_ARGS")
    )
    install_groups: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=AliasChoices("LIVE_PULL_INSTALL_GROUPS")
    )
    install_extras: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=AliasChoices("LIVE_PULL_INSTALL_EXTRAS")
    )
    install_timeout: float = Field(
        1800.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_INSTALL_TIMEOUT")
    )
    git_auth: Literal["none", "url", "token", "password", "ssh-key", "github-app"] | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GIT_AUTH")
    )
    git_username: str | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_GIT_USERNAME"))
    git_username_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GIT_USERNAME_FILE")
    )
    git_token: SecretStr | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_GIT_TOKEN"))
    git_token_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GIT_TOKEN_FILE")
    )
    git_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GIT_PASSWORD")
    )
    git_password_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GIT_PASSWORD_FILE")
    )
    ssh_key_file: Path | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_SSH_KEY_FILE"))
    ssh_known_hosts_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_SSH_KNOWN_HOSTS_FILE")
    )
    ssh_strict_host_key_checking: bool = Field(
        True, validation_alias=AliasChoices("LIVE_PULL_SSH_STRICT_HOST_KEY_CHECKING")
    )
    github_app_id: str | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GITHUB_APP_ID")
    )
    github_app_private_key_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GITHUB_APP_PRIVATE_KEY_FILE")
    )
    github_app_installation_id: str | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_GITHUB_APP_INSTALLATION_ID")
    )
    github_api_url: str = Field(
        "https://api.github.com", validation_alias=AliasChoices("LIVE_PULL_GITHUB_API_URL")
    )
    webhook_secret_value: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_WEBHOOK_SECRET")
    )
    webhook_secret_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_WEBHOOK_SECRET_FILE")
    )
    # As given (None when unset, "off"): see listen_address.
    listen: str | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_LISTEN"))
    handoff: Literal["auto", "socket", "proxy"] = Field(
        "auto", validation_alias=AliasChoices("LIVE_PULL_HANDOFF")
    )
    drain_seconds: float = Field(
        5.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_DRAIN_SECONDS")
    )
    healthcheck_path: str | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_HEALTHCHECK_PATH")
    )
    healthcheck_timeout: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_HEALTHCHECK_TIMEOUT")
    )
    bake_seconds: float = Field(30.0, ge=0, validation_alias=AliasChoices("LIVE_PULL_BAKE_SECONDS"))
    rollback_on_crash: bool = Field(
        False, validation_alias=AliasChoices("LIVE_PULL_ROLLBACK_ON_CRASH")
    )
    crash_loop: Annotated[tuple[int, float], NoDecode] = Field(
        (3, 60.0), validation_alias=AliasChoices("LIVE_PULL_CRASH_LOOP")
    )
    update_window: str | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_UPDATE_WINDOW")
    )
    submodules: bool = Field(False, validation_alias=AliasChoices("LIVE_PULL_SUBMODULES"))
    verify_mode: Literal["off", "commit", "tag"] = Field(
        "off", validation_alias=AliasChoices("LIVE_PULL_VERIFY")
    )
    allowed_signers_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_ALLOWED_SIGNERS_FILE")
    )
    gpg_keyring: Path | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_GPG_KEYRING"))
    app_user: str | None = Field(None, validation_alias=AliasChoices("LIVE_PULL_APP_USER"))
    allow_http_credentials: bool = Field(
        False, validation_alias=AliasChoices("LIVE_PULL_ALLOW_HTTP_CREDENTIALS")
    )
    max_revision_mb: float = Field(
        2048.0, gt=0, validation_alias=AliasChoices("LIVE_PULL_MAX_REVISION_MB")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=AliasChoices("LIVE_PULL_LOG_LEVEL")
    )
    log_format: Literal["text", "json"] = Field(
        "text", validation_alias=AliasChoices("LIVE_PULL_LOG_FORMAT")
    )
    # Apprise URLs hold tokens: a secret as a whole (see notify_urls).
    notify_urls_value: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_NOTIFY_URLS")
    )
    notify_urls_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_NOTIFY_URLS_FILE")
    )
    notify_on: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_EVENTS, validation_alias=AliasChoices("LIVE_PULL_NOTIFY_ON")
    )
    # A PostgreSQL URL (with its password: a secret as a whole) or `kubernetes`.
    fleet_url_value: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_FLEET_URL")
    )
    fleet_url_file: Path | None = Field(
        None, validation_alias=AliasChoices("LIVE_PULL_FLEET_URL_FILE")
    )
    fleet_replica: str = Field(
        default_factory=socket.gethostname, validation_alias=AliasChoices("LIVE_PULL_FLEET_REPLICA")
    )
    fleet_max_switching: int = Field(
        1, ge=1, validation_alias=AliasChoices("LIVE_PULL_FLEET_MAX_SWITCHING")
    )
    # Set by Kubernetes, not by the operator: checked only when the fleet's store is
    # kubernetes, never shown by check-config, and left in the app's environment.
    kubernetes_service_host: str | None = Field(
        None, validation_alias=AliasChoices("KUBERNETES_SERVICE_HOST")
    )
    kubernetes_service_port: str | None = Field(
        None, validation_alias=AliasChoices("KUBERNETES_SERVICE_PORT")
    )

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """`NAME=` (empty) means unset for every optional setting, as in env files."""
        optional = info.field_name and cls.model_fields[info.field_name].default is None
        if optional and isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("repo_url", mode="before")
    @classmethod
    def _parse_url(cls, value: object) -> RepoUrl:
        if isinstance(value, RepoUrl):
            return value
        return parse_repo_url(str(value))

    @field_validator("repo_ref")
    @classmethod
    def _check_ref(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if tags.is_range(value):
            tags.parse_range(value)  # a bad specifier set fails here, before any work
            return value
        if value.startswith("-") or any(c.isspace() or c in "~^:?*[\\" for c in value):
            raise ValueError("is not a valid git ref name")
        return value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @field_validator("app_dir")
    @classmethod
    def _inside_repository(cls, value: str) -> str:
        return _relative_inside(value, allow_empty=True)

    @field_validator("shared_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        return tuple(_shared_path(str(item)) for item in items if str(item).strip())

    @field_validator("install_groups", "install_extras", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> tuple[str, ...]:
        """Comma-separated group or extra names, as the lock spells them."""
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        names = tuple(str(item).strip() for item in items if str(item).strip())
        for name in names:
            if not GROUP_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a group or extra name")
        return names

    @field_validator("command", "install_command", "release_command")
    @classmethod
    def _non_blank_command(cls, value: str | None) -> str | None:
        if value is not None and "\n" in value:
            raise ValueError("must be a single line")
        return value if value and value.strip() else None

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.strip().lower() == "off":
            return "off"
        match = re.fullmatch(r"tcp://(?P<host>[^:/\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})", value)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError("must look like tcp://0.0.0.0:8000, or be off")
        return value

    @property
    def listen_address(self) -> str | None:
        """The socket `web` is served on: live-pull owns PORT unless LIVE_PULL_LISTEN
        names another address, or is `off` (None: stop-then-start)."""
        if self.listen == "off":
            return None
        return self.listen or f"tcp://0.0.0.0:{self.port}"

    @field_validator("crash_loop", mode="before")
    @classmethod
    def _exits_per_window(cls, value: object) -> object:
        """`3/60s`: that many unexpected exits within that many seconds is a crash loop."""
        if not isinstance(value, str):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s?\s*", value)
        if match is None or int(match[1]) < 1 or float(match[2]) <= 0:
            raise ValueError("must look like 3/60s (exits / seconds)")
        return int(match[1]), float(match[2])

    @field_validator("update_window")
    @classmethod
    def _parse_windows(cls, value: str | None) -> str | None:
        """Checked here, so a bad spec fails at start (see entrypoint/windows.py)."""
        return None if value is None else parse_windows(value).spec

    @property
    def update_windows(self) -> UpdateWindows | None:
        """When updates may go live (None: at any time)."""
        return None if self.update_window is None else parse_windows(self.update_window)

    @field_validator("healthcheck_path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("must be a URL path starting with / (e.g. /healthz)")
        return value

    @field_validator("lockfile")
    @classmethod
    def _lockfile_relative(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = [part.strip() for part in value.split(",")]
        if not all(parts) or any(posixpath.isabs(part) for part in parts):
            raise ValueError("each file must be a relative path (to LIVE_PULL_APP_DIR)")
        return ",".join(posixpath.normpath(part) for part in parts)

    @model_validator(mode="after")
    def _lockfile_inside(self) -> Settings:
        """The lockfile is named relative to the app directory (`../uv.lock` from a
        workspace member) and must stay inside the repository."""
        for part in (self.lockfile or "").split(","):
            if not part:
                continue
            try:
                _relative_inside(posixpath.join(self.app_dir or ".", part), allow_empty=False)
            except ValueError:
                raise ValueError(f"LIVE_PULL_LOCKFILE: {part!r} leaves the repository") from None
        return self

    @field_validator("app_user")
    @classmethod
    def _existing_user(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        identity.lookup(value.strip())
        return value.strip()

    @field_validator("notify_urls_value")
    @classmethod
    def _apprise_urls(cls, value: SecretStr | None) -> SecretStr | None:
        """Each URL one Apprise can send to; the error names its place, never the URL."""
        if value is None:
            return None
        problem = _url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value if split_urls(value.get_secret_value()) else None

    @field_validator("notify_on", mode="before")
    @classmethod
    def _notify_events(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        names = tuple(str(item).strip().lower() for item in items if str(item).strip())
        for name in names:
            if name not in EVENTS:
                raise ValueError(f"{name!r} is not an event ({', '.join(EVENTS)})")
        return names or DEFAULT_EVENTS

    @property
    def notify_urls(self) -> Secret | None:
        """Where the Apprise URLs are (None: notifications off); read them with
        split_urls(secret.read()), at every use: a rotated file is taken up."""
        return _secret("LIVE_PULL_NOTIFY_URLS", self.notify_urls_value, self.notify_urls_file)

    @field_validator("fleet_url_value")
    @classmethod
    def _fleet_store(cls, value: SecretStr | None) -> SecretStr | None:
        """A store the fleet already has; the error never repeats the URL (a password)."""
        if value is not None:
            fleet_store_kind(value.get_secret_value())
        return value

    @field_validator("fleet_replica")
    @classmethod
    def _replica_name(cls, value: str) -> str:
        name = value.strip()
        if not GROUP_NAME.fullmatch(name) or len(name) > 253:
            raise ValueError(f"{name!r} is not a replica name (letters, digits, . _ -)")
        return name

    @property
    def kubernetes_api(self) -> str | None:
        """The API server as this pod reaches it (None: not in a pod)."""
        host, port = self.kubernetes_service_host, self.kubernetes_service_port
        if host is None:
            return None
        return f"https://{f'[{host}]' if ':' in host else host}:{port or 443}"

    @property
    def fleet_url(self) -> Secret | None:
        """Where the fleet's store is (None: this replica is on its own); read at every
        connection, so a rotated file is taken up."""
        return _secret("LIVE_PULL_FLEET_URL", self.fleet_url_value, self.fleet_url_file)

    @field_validator("install_args", mode="before")
    @classmethod
    def _split_args(cls, value: object) -> tuple[str, ...]:
        if not isinstance(value, str):
            return tuple(str(item) for item in value)  # type: ignore[attr-defined]
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ValueError(f"cannot be split into arguments: {exc}") from None

    def secret_files(self) -> dict[str, Path]:
        """The `*_FILE` settings that name a secret, by variable, where set."""
        names = (
            "git_token_file",
            "git_password_file",
            "git_username_file",
            "ssh_key_file",
            "github_app_private_key_file",
            "webhook_secret_file",
            "notify_urls_file",
            "fleet_url_file",
        )
        found = {_variable_of(name): getattr(self, name) for name in names}
        return {variable: path for variable, path in found.items() if path is not None}

    @property
    def auth(self) -> AuthSettings:
        return AuthSettings(
            url_credentials=self.repo_url.credentials,
            username=_secret("LIVE_PULL_GIT_USERNAME", self.git_username, self.git_username_file),
            token=_secret("LIVE_PULL_GIT_TOKEN", self.git_token, self.git_token_file),
            password=_secret("LIVE_PULL_GIT_PASSWORD", self.git_password, self.git_password_file),
            ssh_key_file=self.ssh_key_file,
            known_hosts_file=self.ssh_known_hosts_file,
            strict_host_keys=self.ssh_strict_host_key_checking,
            github_app=self._github_app(),
            origin=credential_origin(self.repo_url),
        )

    def _github_app(self) -> GitHubAppSettings | None:
        if self.github_app_id is None or self.github_app_private_key_file is None:
            return None
        return GitHubAppSettings(
            self.github_app_id,
            self.github_app_private_key_file,
            self.github_app_installation_id or "",
            self.github_api_url,
        )

    @property
    def webhook_secret(self) -> Secret | None:
        """None: the webhook endpoint is off."""
        return _secret(
            "LIVE_PULL_WEBHOOK_SECRET", self.webhook_secret_value, self.webhook_secret_file
        )

    @property
    def verify(self) -> VerifySettings:
        return VerifySettings(self.verify_mode, self.allowed_signers_file, self.gpg_keyring)

    @property
    def ref_label(self) -> str:
        return self.repo_ref or "HEAD (remote default branch)"

    def effective(self) -> dict[str, str]:
        """The configuration as `check-config` prints it: every variable with its value
        (defaults filled in, unset ones empty, secrets as ***), so that the output,
        used as an environment, means the same configuration again."""
        names = type(self).model_fields
        shown = {_variable_of(name): _shown(name, getattr(self, name)) for name in names}
        for variable in POD_VARIABLES:
            del shown[variable]
        shown["LIVE_PULL_GIT_AUTH"] = self.auth.kind
        return shown


def _shown(field_name: str, value: object) -> str:
    """One setting as its variable would spell it."""
    if value is None:
        return ""
    if isinstance(value, RepoUrl):
        return value.redacted()
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, tuple):
        return _shown_tuple(field_name, value)
    return str(value)


def _shown_tuple(field_name: str, value: tuple[object, ...]) -> str:
    if field_name == "install_args":
        return shlex.join(str(arg) for arg in value)
    if field_name == "crash_loop":
        exits, seconds = value
        return f"{_shown('', exits)}/{_shown('', seconds)}s"
    return ",".join(str(item) for item in value)


SEPARATORS = " \t,;"
NEXT_URL = re.compile(r"[\s,;]+(?=[a-z0-9]{1,32}://)", re.IGNORECASE)


def split_urls(value: str) -> tuple[str, ...]:
    """LIVE_PULL_NOTIFY_URLS (or its file's text): one a line, or several on a line
    separated as Apprise separates them, by commas, semicolons or spaces before the next
    `scheme://` only: an URL keeps the commas and spaces of its own
    (`mailto://...?to=a@example.com,b@example.com`). Nothing is left out: a piece that is
    no URL is one Apprise refuses, and the configuration error names its place."""
    pieces = (
        piece.strip(SEPARATORS) for line in value.splitlines() for piece in NEXT_URL.split(line)
    )
    return tuple(piece for piece in pieces if piece)


def _url_problem(text: str) -> str | None:
    """What is wrong with a list of Apprise URLs, naming a URL by its place, never by
    itself."""
    problem = unusable(split_urls(text))
    if problem is None:
        return None
    position, scheme = problem
    return f"URL {position} ({scheme}://...) is not one Apprise can send to"


def _check_notify(settings: Settings) -> None:
    """LIVE_PULL_NOTIFY_URLS or its _FILE (not both); the file's URLs are checked too."""
    if settings.notify_urls_value is not None and settings.notify_urls_file is not None:
        raise ConfigError(
            "LIVE_PULL_NOTIFY_URLS: set either it or LIVE_PULL_NOTIFY_URLS_FILE, not both"
        )
    _check_readable(settings, "notify_urls_file")
    if settings.notify_urls_file is not None:
        problem = _url_problem(settings.notify_urls_file.read_text(errors="replace"))
        if problem is not None:
            raise ConfigError(f"LIVE_PULL_NOTIFY_URLS_FILE: {problem}")


def fleet_store_kind(url: str) -> str:
    """postgresql or kubernetes, from LIVE_PULL_FLEET_URL; ValueError naming the problem."""
    text = url.strip()
    if text == "kubernetes":
        return "kubernetes"
    scheme, _, rest = text.partition("://")
    if scheme not in ("postgresql", "postgres") or not rest:
        raise ValueError("must be a postgresql:// URL or `kubernetes`")
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict  # only when a fleet is configured

    try:
        conninfo_to_dict(text)
    except Error:  # libpq's message quotes the URL: not repeated
        raise ValueError("is not a URL PostgreSQL's client can parse") from None
    return "postgresql"


def url_secrets(url: str) -> list[str]:
    """A store URL and its password as written and as meant (for the log's mask)."""
    if url.strip() == "kubernetes":  # a word, not a secret
        return []
    written = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    return [secret for secret in (url.strip(), written, unquote(written)) if secret]


def _check_fleet(settings: Settings) -> None:
    """LIVE_PULL_FLEET_URL or its _FILE (not both); the file's store is checked too."""
    if settings.fleet_url_value is not None and settings.fleet_url_file is not None:
        raise ConfigError(
            "LIVE_PULL_FLEET_URL: set either it or LIVE_PULL_FLEET_URL_FILE, not both"
        )
    _check_readable(settings, "fleet_url_file")
    variable, kind = "LIVE_PULL_FLEET_URL", None
    if settings.fleet_url_value is not None:
        kind = fleet_store_kind(settings.fleet_url_value.get_secret_value())
    if settings.fleet_url_file is not None:
        variable = "LIVE_PULL_FLEET_URL_FILE"
        try:
            kind = fleet_store_kind(settings.fleet_url_file.read_text(errors="replace"))
        except ValueError as exc:
            raise ConfigError(f"{variable}: {exc}") from None
    if kind == "kubernetes":
        _check_pod(settings, variable)


def _check_pod(settings: Settings, variable: str) -> None:
    """LIVE_PULL_FLEET_URL=kubernetes: the API server and the service account of a pod."""
    if settings.kubernetes_service_host is None:
        raise ConfigError(f"{variable}: kubernetes, but not in a pod (no KUBERNETES_SERVICE_HOST)")
    port = settings.kubernetes_service_port
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"{variable}: kubernetes, but KUBERNETES_SERVICE_PORT is not a port")
    for name in ("token", "namespace"):
        if not (SERVICE_ACCOUNT_DIR / name).is_file():
            raise ConfigError(
                f"{variable}: kubernetes, but the pod has no service account {name}"
                f" ({SERVICE_ACCOUNT_DIR / name}; automountServiceAccountToken: false?)"
            )


def _relative_inside(value: str, *, allow_empty: bool) -> str:
    cleaned = value.strip()
    if not cleaned:
        if allow_empty:
            return ""
        raise ValueError("contains an empty path")
    if posixpath.isabs(cleaned):
        raise ValueError(f"{cleaned!r} must be relative to the repository")
    normal = posixpath.normpath(cleaned)
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"{cleaned!r} leaves the repository")
    return "" if normal == "." else normal


def _shared_path(value: str) -> str:
    """Normalise one shared path; a trailing slash (a directory) is kept."""
    is_dir = value.strip().endswith("/")
    normal = _relative_inside(value, allow_empty=False)
    if not normal or normal == ".git" or normal.startswith(".git/"):
        raise ValueError(f"{value.strip()!r} cannot be shared")
    return normal + "/" if is_dir else normal


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the environment, or raise ConfigError with one line."""
    environ = os.environ if environ is None else environ
    _reject_unknown(environ)
    known = {key: value for key, value in environ.items() if key in _ALIASES}
    try:
        settings = Settings.model_validate(known)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    _check_auth(settings)
    _check_notify(settings)
    _check_fleet(settings)
    return settings


def _secret(variable: str, value: str | SecretStr | None, file: Path | None) -> Secret | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None and file is None:
        return None
    return Secret(variable, value, file)


def _check_auth(settings: Settings) -> None:
    """Cross-variable rules: one method at a time, on a transport that can carry it."""
    pairs = {
        "LIVE_PULL_GIT_USERNAME": (settings.git_username, settings.git_username_file),
        "LIVE_PULL_GIT_TOKEN": (settings.git_token, settings.git_token_file),
        "LIVE_PULL_GIT_PASSWORD": (settings.git_password, settings.git_password_file),
        "LIVE_PULL_WEBHOOK_SECRET": (settings.webhook_secret_value, settings.webhook_secret_file),
    }
    for variable, (value, file) in pairs.items():
        if value is not None and file is not None:
            raise ConfigError(f"{variable}: set either it or {variable}_FILE, not both")
    for variable in (
        "git_username_file",
        "git_token_file",
        "git_password_file",
        "webhook_secret_file",
        "ssh_key_file",
        "ssh_known_hosts_file",
        "allowed_signers_file",
        "gpg_keyring",
        "github_app_private_key_file",
    ):
        _check_readable(settings, variable)
    _check_verify(settings)
    _check_github_app(settings)
    auth = settings.auth
    given = [name for name, value in _auth_variables(settings).items() if value is not None]
    if len(given) > 1:
        raise ConfigError(
            f"{given[1]}: only one authentication method at a time ({given[0]} is set)"
        )
    secret = auth.token or auth.password
    is_http = settings.repo_url.url.startswith(("https://", "http://"))
    if secret is not None and not is_http:
        raise ConfigError(f"{secret.source}: needs an https:// or http:// REPO_URL")
    if auth.ssh_key_file is not None and (is_http or settings.repo_url.is_file):
        raise ConfigError("LIVE_PULL_SSH_KEY_FILE: needs an ssh:// or user@host:path REPO_URL")
    sends = auth.kind not in ("none", "ssh-key")
    if sends and plain_http_elsewhere(settings.repo_url) and not settings.allow_http_credentials:
        raise ConfigError(
            "REPO_URL: credentials would travel unencrypted over http:// to a host that is"
            " not this machine; use https://, or set LIVE_PULL_ALLOW_HTTP_CREDENTIALS=true"
        )
    _check_declared_auth(settings.git_auth, auth)


def _check_declared_auth(declared: str | None, auth: AuthSettings) -> None:
    """LIVE_PULL_GIT_AUTH, when set, must name the method the other variables give."""
    if declared is None or declared == auth.kind:
        return
    raise ConfigError(
        f"LIVE_PULL_GIT_AUTH: is {declared} but the settings give {auth.kind}"
        f" ({declared} needs {AUTH_KINDS[declared]})"
    )


def _auth_variables(settings: Settings) -> dict[str, object]:
    auth = settings.auth
    return {
        "REPO_URL": auth.url_credentials,
        auth.token.source if auth.token else "LIVE_PULL_GIT_TOKEN": auth.token,
        auth.password.source if auth.password else "LIVE_PULL_GIT_PASSWORD": auth.password,
        "LIVE_PULL_SSH_KEY_FILE": auth.ssh_key_file,
        "LIVE_PULL_GITHUB_APP_ID": auth.github_app,
    }


def _check_github_app(settings: Settings) -> None:
    parts = {
        "LIVE_PULL_GITHUB_APP_ID": settings.github_app_id,
        "LIVE_PULL_GITHUB_APP_PRIVATE_KEY_FILE": settings.github_app_private_key_file,
        "LIVE_PULL_GITHUB_APP_INSTALLATION_ID": settings.github_app_installation_id,
    }
    given = [name for name, value in parts.items() if value]
    if given and len(given) < len(parts):
        missing = next(name for name in parts if name not in given)
        raise ConfigError(f"{missing}: is required with {given[0]} (GitHub App authentication)")
    if given and not settings.repo_url.url.startswith(("https://", "http://")):
        raise ConfigError("LIVE_PULL_GITHUB_APP_ID: needs an https:// or http:// REPO_URL")


def _check_verify(settings: Settings) -> None:
    if settings.verify_mode == "off":
        return
    if settings.allowed_signers_file is None and settings.gpg_keyring is None:
        raise ConfigError(
            "LIVE_PULL_VERIFY: needs LIVE_PULL_ALLOWED_SIGNERS_FILE or LIVE_PULL_GPG_KEYRING"
        )
    if settings.verify_mode == "tag" and settings.repo_ref is None:
        raise ConfigError("LIVE_PULL_VERIFY: =tag needs REPO_REF naming a tag")


def _check_readable(settings: Settings, field_name: str) -> None:
    path = getattr(settings, field_name)
    if path is None:
        return
    variable = _variable_of(field_name)
    try:
        path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def _variable_of(field_name: str) -> str:
    alias = Settings.model_fields[field_name].validation_alias
    assert isinstance(alias, AliasChoices)
    return str(alias.choices[0])


def _reject_unknown(environ: Mapping[str, str]) -> None:
    for key in sorted(environ):
        if key.startswith(PREFIX) and key not in _ALIASES and key not in APP_FACING:
            raise ConfigError(f"{key}: unknown setting (check the spelling)")


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a check across settings: its message names them
        return message
    variable = str(error["loc"][0])
    if error["type"] == "missing":
        return f"{variable}: is required"
    if variable in SECRET_VARIABLES or error["type"] == "value_error":
        return f"{variable}: {message}"
    return f"{variable}: {message} (got {error['input']!r})"


def scrub_environ(settings: Settings, environ: MutableMapping[str, str] | None = None) -> None:
    """Remove live-pull's settings from this process's environment, so no child
    inherits them: secrets, and the `*_FILE` paths that lead to them.

    git, supervisord, installers and the app are all started after this; the app
    still sees REPO_URL (without its credentials), REPO_REF and PORT. GIT_* variables
    (GIT_DIR, GIT_CONFIG_PARAMETERS, ...) would steer the agent's git: gone too.
    """
    environ = os.environ if environ is None else environ
    for name in _ALIASES - APP_KEEPS:
        environ.pop(name, None)
    for name in [name for name in environ if name.startswith("GIT_")]:
        environ.pop(name)  # git takes its configuration from the agent alone
    environ["REPO_URL"] = settings.repo_url.url


def _aliases() -> frozenset[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
    return frozenset(names)


_ALIASES = _aliases()


def status_url(environ: Mapping[str, str] | None = None) -> str:
    """Where `status` and `sync` find a running agent: only the status port matters."""
    environ = os.environ if environ is None else environ
    raw = environ.get("LIVE_PULL_STATUS_PORT", "")
    try:
        port = Settings.model_fields["status_port"].default if not raw else int(raw)
    except ValueError:
        raise ConfigError(f"LIVE_PULL_STATUS_PORT: not a port number (got {raw!r})") from None
    return f"http://127.0.0.1:{port}"

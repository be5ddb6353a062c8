"""The one local git repository: ask the remote, fetch a revision, export it.

Made by init + fetch, shallow by default. It is a cache of the remote: when it
is damaged in any way it is thrown away and rebuilt, never repaired by hand.
Only damage calls for that: a failure is a LocalGitError when it happened on this
machine, a plain GitError when the remote (network, credentials, refs) failed, and
healthy() says, without the network, whether the repository itself is damaged.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import git

from entrypoint import tags
from entrypoint.auth import GitAuth
from entrypoint.credentials import RepoUrl
from entrypoint.errors import GitDiskError, GitError, LocalGitError, RefNotFound
from entrypoint.events import Commit
from entrypoint.files import remove_path
from entrypoint.submodules import (
    Submodule,
    cache_name,
    credentials_note,
    parse_gitmodules,
    resolve_url,
)

log = logging.getLogger(__name__)

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
FETCHED_REF = "refs/live-pull/fetched"
REMOTE = "origin"
NO_HOME = "/nonexistent"  # only root could create it; git finds no config there
# The only configuration the local repository may hold (see _keep_to_our_config).
OWN_CONFIG = frozenset(
    {
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "gc.autodetach",
        f"remote.{REMOTE}.url",
        f"remote.{REMOTE}.fetch",
    }
)
# Files git would read from the repository that live-pull never writes there.
FOREIGN_FILES = ("info/attributes", "info/alternates", "objects/info/alternates", "commondir")
# Every git command runs no hook at all, wherever one was put.
NO_HOOKS = ("-c", "core.hooksPath=/dev/null")
ERROR_TAIL_LINES = 5
SUBMODULE_KEYS = r"^submodule\..*\.(path|url)$"
# What git tries after a file:// URL's path to find the repository (enter_repo).
ENTER_REPO_SUFFIXES = ("/.git", "", ".git/.git", ".git")
# stderr words (lowercase) of a failure on this machine, whatever the command.
DISK_FAILURES = (
    "no space left on device",
    "disk quota exceeded",
    "read-only file system",
    "input/output error",
)
LOCAL_FAILURES = (
    "unable to write",
    "unable to create",
    "insufficient permission",
    "cannot lock ref",
    "reference broken",
)
# stderr words of a damaged repository, trusted from commands that read only it.
DAMAGE = (
    "corrupt",
    "inflate",
    "bad object",
    "unable to read",
    "failed to unpack",
    "does not match index",
    "cannot be accessed",
    "not a git repository",
    "bad config",
    "invalid object",
    "is empty",
    "reference broken",
    "broken ref",
)
# The remote's HEAD cannot be asked for alone (ls-remote then lists every ref the remote
# has, a host's refs/pull/* included), so the default branch it names is learnt and
# asked for as a branch; learnt again at the 10th check or after 10 minutes, whichever
# comes first (a default branch changed on the remote is followed by then), or at once
# when the branch is gone.
DEFAULT_BRANCH_CHECKS = 10
DEFAULT_BRANCH_SECONDS = 600.0
READS = frozenset({"rev-parse", "update-ref", "cat-file", "ls-tree", "read-tree", "checkout-index"})


@dataclass(frozen=True)
class RemoteRevision:
    """What the configured ref points to on the remote right now."""

    sha: str
    ref_name: str | None  # None when the configured ref is a commit
    tag: str | None = None  # the tag chosen when following a range (REPO_REF=semver:...)


@dataclass
class LearntBranch:
    """The remote's default branch as last learnt, and how often asked for since."""

    name: str
    learnt_at: float
    checks: int = 0

    def asked_again(self) -> bool:
        """One more check may ask for this branch alone (else the remote's HEAD)."""
        self.checks += 1
        age = time.monotonic() - self.learnt_at
        return self.checks < DEFAULT_BRANCH_CHECKS and age < DEFAULT_BRANCH_SECONDS


class Repository:
    def __init__(
        self,
        path: Path,
        url: RepoUrl,
        *,
        depth: int,
        timeout: float,
        auth: GitAuth,
    ) -> None:
        self.path = path
        self.url = url
        self.depth = depth
        self.timeout = timeout
        self.auth = auth
        self._env = _git_environment(url)
        self._repo: git.Repo | None = None
        self._damage: str | None = None  # what a read found broken since the last rebuild
        self._default_branch: LearntBranch | None = None

    # -- the local repository -------------------------------------------------

    def open(self) -> None:
        """Open the repository, rebuilding it if it is missing or not a repository."""
        if not self.path.exists():
            log.info("creating repository path=%s", self.path)
            self.rebuild()
            return
        if not self.healthy():
            log.warning("repository damaged, rebuilding path=%s", self.path)
            self.rebuild()
            return
        self._remove_stale_locks()
        self._keep_to_our_config()

    def healthy(self) -> bool:
        """Is the repository itself sound? Local and cheap: no network, no full check.

        Its files (HEAD, objects/, refs/, config with the remote) are readable, the
        fetched revision's commit is present, and no command has found an object
        corrupt or missing since the last rebuild. A failed fetch leaves it healthy.
        """
        if self._damage is not None:
            log.warning("repository damaged error=%s", self._damage)
            return False
        try:
            self._repo = git.Repo(self.path)
            self._git("rev-parse", "--git-dir")
            self._git("config", "--get", f"remote.{REMOTE}.url")
            self._check_fetched()
        except Exception as exc:  # whatever is wrong, a cache is rebuilt, not mended
            log.warning("repository damaged error=%s", exc)
            return False
        return True

    def _check_fetched(self) -> None:
        """The fetched ref, when there is one, names a commit that is here."""
        if self._has_fetched_ref():
            self._git("rev-parse", "--verify", "--quiet", f"{FETCHED_REF}^{{commit}}")

    def _has_fetched_ref(self) -> bool:
        """Whether the ref is there at all, even broken (git skips broken refs)."""
        if (self.path / FETCHED_REF).exists():
            return True
        packed = self.path / "packed-refs"
        return packed.is_file() and f" {FETCHED_REF}\n" in packed.read_text(errors="replace")

    def rebuild(self) -> None:
        remove_path(self.path)
        self._repo = git.Repo.init(self.path, bare=True)
        self._damage = None
        self._git("config", "gc.autoDetach", "false")
        self._git("remote", "add", REMOTE, self.url.url)

    def _remove_stale_locks(self) -> None:
        # Only live-pull runs git here, one command at a time: any lock file
        # present before a command is left over from a killed one.
        for lock in self.path.rglob("*.lock"):
            log.warning("removing stale lock file=%s", lock.relative_to(self.path))
            lock.unlink(missing_ok=True)

    # -- the remote -------------------------------------------------------------

    def resolve(self, ref: str | None) -> RemoteRevision:
        """Ask the remote what `ref` points to: one round trip, no objects."""
        if ref is not None and FULL_SHA.match(ref):
            return RemoteRevision(ref, None)
        if ref is None:
            return self._resolve_default_branch()
        if tags.is_range(ref):
            return self._resolve_range(ref)
        names = [ref, f"{ref}^{{}}"] if ref.startswith("refs/") else _candidates(ref)
        found = _parse_ls_remote(self._remote_git("ls-remote", *_scope(names), REMOTE, *names))
        for name in names:
            peeled = found.get(f"{name}^{{}}")
            if name in found:
                return RemoteRevision(peeled or found[name], name)
        raise RefNotFound(f"ref not found on the remote: ref={ref}")

    def _resolve_default_branch(self) -> RemoteRevision:
        learnt = self._default_branch
        if learnt is not None and learnt.asked_again():
            branch = learnt.name
            found = _parse_ls_remote(self._remote_git("ls-remote", "--heads", REMOTE, branch))
            if branch in found:
                return RemoteRevision(found[branch], branch)
        return self._learn_default_branch()

    def _learn_default_branch(self) -> RemoteRevision:
        """Ask the remote's HEAD (every ref comes with it) and remember its branch."""
        self._default_branch = None
        output = self._remote_git("ls-remote", "--symref", REMOTE, "HEAD")
        branch = None
        for line in output.splitlines():
            if line.startswith("ref: ") and line.endswith("\tHEAD"):
                branch = line[len("ref: ") :].split("\t")[0]
        sha = _parse_ls_remote(output).get("HEAD")
        if sha is None:
            raise RefNotFound("the remote has no default branch (empty repository?)")
        if branch is not None and branch.startswith("refs/heads/"):
            self._default_branch = LearntBranch(branch, time.monotonic())
        return RemoteRevision(sha, branch)

    def _resolve_range(self, ref: str) -> RemoteRevision:
        """The highest tag in the range of `semver:<specifiers>` (see tags.py)."""
        spec = tags.parse_range(ref)
        found = tags.tags_in(_parse_ls_remote(self._remote_git("ls-remote", "--tags", REMOTE)))
        tag = tags.highest(spec, found)
        if tag is None:
            raise RefNotFound(tags.no_match(ref, found))
        return RemoteRevision(tag.sha, tag.ref, tag.name)

    def fetch(self, revision: RemoteRevision) -> str:
        """Fetch the revision's commit (shallow); return the commit's sha."""
        self._remove_stale_locks()
        depth = [f"--depth={self.depth}"] if self.depth > 0 else []
        if revision.ref_name is None:
            self._remote_git("fetch", "--no-tags", *depth, REMOTE, revision.sha)
            self._git("update-ref", FETCHED_REF, revision.sha)
        else:
            refspec = f"+{revision.ref_name}:{FETCHED_REF}"
            self._remote_git("fetch", "--no-tags", *depth, REMOTE, refspec)
        return self._git("rev-parse", "--verify", f"{FETCHED_REF}^{{commit}}").strip()

    def verify(self, kind: str, name: str, config: list[str], env: dict[str, str]) -> str | None:
        """Run `git verify-<kind>`; None when the signature is good, else why not."""
        if self._git("cat-file", "-t", name).strip() != kind:
            return f"cannot verify a non-{kind} object"
        raw = self._git("cat-file", kind, name)
        if "-----BEGIN" not in raw:
            return "no signature found"
        try:
            self._git(*config, f"verify-{kind}", name, extra_env=env)
        except GitError as exc:
            return str(exc)
        return None

    def describe(self, sha: str) -> Commit | None:
        """A commit's subject and author name, if the commit is here (no network)."""
        if not FULL_SHA.match(sha):
            return None
        try:
            output = self._git("log", "-1", "--format=%an%x1f%s", sha, "--")
        except GitError:
            return None
        author, _, subject = output.strip().partition("\x1f")
        return Commit(sha, subject or None, author or None)

    def submodules(self, sha: str) -> list[tuple[Submodule, str]]:
        """Each submodule of the revision with the commit it records."""
        try:
            listing = self._git(
                "config",
                "--blob",
                f"{sha}:.gitmodules",
                "--get-regexp",
                r"^submodule\..*\.(path|url)$",
            )
        except GitError:
            return []  # no .gitmodules in this revision
        found = []
        for module in parse_gitmodules(listing):
            entry = self._git("ls-tree", sha, "--", module.path).split()
            if len(entry) >= 3 and entry[1] == "commit":
                found.append((module, entry[2]))
        return found

    def export_submodules(self, sha: str, destination: Path) -> None:
        """Fetch each submodule at its recorded commit (shallow) and export it in place."""
        for module, commit in self.submodules(sha):
            url = resolve_url(self.url, module.url)
            cache = Repository(
                self.path.parent / "modules" / cache_name(url.url),
                url,
                depth=self.depth,
                timeout=self.timeout,
                auth=self.auth,
            )
            cache.open()
            try:
                cache.fetch(RemoteRevision(commit, None))
            except GitError as exc:
                note = credentials_note(self.url, url)
                raise type(exc)(f"submodule {module.path}: {exc}{note}") from exc
            cache.export(commit, destination / module.path)
            log.info("submodule exported path=%s sha=%s", module.path, commit[:12])

    def export(self, sha: str, destination: Path) -> None:
        """Write the files of `sha` into `destination` (no .git inside)."""
        index = self.path / f"live-pull-index-{uuid.uuid4().hex}"
        env = {"GIT_INDEX_FILE": str(index)}
        work_tree = f"--work-tree={destination}"
        try:
            self._git(work_tree, "read-tree", sha, extra_env=env)
            self._git(work_tree, "checkout-index", "--all", "--force", extra_env=env)
        finally:
            index.unlink(missing_ok=True)

    # -- plumbing ---------------------------------------------------------------

    def _keep_to_our_config(self) -> None:
        """The local repository holds our configuration and nothing else.

        Where the app runs as the agent's uid it could write there: an `insteadOf`, an
        `include`, a hook path, an fsmonitor or sshCommand would redirect or run code
        in the agent's next fetch. Checked before every command that reaches the remote.
        """
        listing = self._git("config", "--local", "--list", "--name-only").split()
        for key in sorted({key.lower() for key in listing} - OWN_CONFIG):
            log.warning("removing configuration live-pull did not write key=%s", key)
            self._git("config", "--local", "--unset-all", key)
        if self._git("config", "--get", f"remote.{REMOTE}.url").strip() != self.url.url:
            self._git("config", "--local", "--replace-all", f"remote.{REMOTE}.url", self.url.url)
        for name in FOREIGN_FILES:
            if (self.path / name).exists() or (self.path / name).is_symlink():
                log.warning("removing a file live-pull did not write file=%s", name)
                remove_path(self.path / name)

    def _remote_git(self, *args: str) -> str:
        """A command that talks to the remote: fresh credentials, failures explained."""
        self._keep_to_our_config()
        trust = _trusting_upload_pack(self.url.file_path)
        try:
            return self._git(*trust, *args, extra_env=self.auth.environment(), remote=True)
        except LocalGitError:
            raise
        except GitError as exc:
            raise self.auth.explain(exc) from exc

    def _git(
        self, *args: str, extra_env: dict[str, str] | None = None, remote: bool = False
    ) -> str:
        if self._repo is None:
            raise LocalGitError("repository is not open")
        env = {**self._env, **(extra_env or {})}
        try:
            output = self._repo.git.execute(
                ["git", *NO_HOOKS, *args],
                kill_after_timeout=self.timeout,
                env=env,
                stdout_as_string=True,
            )
        except git.GitCommandError as exc:
            raise self._failure(args, _stderr_tail(exc), remote) from exc
        except (OSError, git.GitError) as exc:
            raise self._failure(args, str(exc), remote=False) from exc
        return str(output)

    def _failure(self, args: tuple[str, ...], detail: str, remote: bool) -> GitError:
        """The error for a failed command: where it failed, and any damage it found."""
        verb = _verb(args)
        message = f"git {verb} failed: {detail}"
        here = " | ".join(
            part for part in detail.lower().split(" | ") if not part.startswith("remote:")
        )
        if any(words in here for words in DISK_FAILURES):
            return GitDiskError(message)
        if verb in READS and any(words in here for words in DAMAGE):
            self._damage = message
        if not remote or any(words in here for words in LOCAL_FAILURES):
            return LocalGitError(message)
        return GitError(message)


def _verb(args: tuple[str, ...]) -> str:
    """The subcommand, past global options such as `-c key=value` and `--work-tree=`."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] == "-c" else rest[1:]
    return rest[0] if rest else "command"


def _trusting_upload_pack(path: str | None) -> list[str]:
    """Options that let git read a file:// remote another user owns (a bind mount).

    git refuses such a repository ("dubious ownership") unless safe.directory names
    it in protected configuration (system, global or command line). For a local
    remote, git clears GIT_CONFIG_PARAMETERS and GIT_CONFIG_COUNT before it starts
    upload-pack, so the setting travels in the upload-pack command itself, which
    git runs through the shell. Trusted: exactly the paths git tries for the URL's
    path, never `*`. None (not a file:// remote): no options.
    """
    if path is None:
        return []
    command = ["git"]
    for suffix in ENTER_REPO_SUFFIXES:
        command += ["-c", f"safe.directory={path.rstrip('/') + suffix}"]
    command.append("upload-pack")
    return ["-c", f"remote.{REMOTE}.uploadpack={shlex.join(command)}"]


def _scope(names: list[str]) -> list[str]:
    """ls-remote's patterns only filter what the remote sends, and match the ends of
    names, so the remote would send every ref it has (a host's refs/pull/* included);
    --heads and --tags make it send branches and tags only, when that is all we want."""
    if all(name.startswith(("refs/heads/", "refs/tags/")) for name in names):
        return ["--heads", "--tags"]
    return []


def _candidates(ref: str) -> list[str]:
    return [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"]


def _parse_ls_remote(output: str) -> dict[str, str]:
    refs: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if FULL_SHA.match(sha):
            refs[name] = sha
    return refs


def _stderr_tail(exc: git.GitCommandError) -> str:
    text = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")
    text = text.strip().removeprefix("stderr:").strip().strip("'").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"exit status {exc.status}"
    return " | ".join(lines[-ERROR_TAIL_LINES:])


def _git_environment(url: RepoUrl) -> dict[str, str]:
    """Never prompt, never hang, only speak the transports we allow, and read no
    configuration but the repository's own (which _keep_to_our_config keeps ours):
    no system or global file, no HOME or XDG directory the app might have written."""
    env = {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "HOME": NO_HOME,
        "XDG_CONFIG_HOME": NO_HOME,
        "GIT_TERMINAL_PROMPT": "0",
        "GCM_INTERACTIVE": "never",
        "GIT_ASKPASS": "true",
        "SSH_ASKPASS": "true",
        "GIT_ALLOW_PROTOCOL": "https:http:ssh:git" + (":file" if url.is_file else ""),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return env

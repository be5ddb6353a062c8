"""Signature verification: only revisions signed by an allowed key are deployed.

LIVE_PULL_VERIFY=commit checks the commit's signature, =tag the tag's. SSH
signatures are checked against LIVE_PULL_ALLOWED_SIGNERS_FILE; GPG ones against
the public keys in LIVE_PULL_GPG_KEYRING, imported into a private GNUPGHOME.
A refused revision is never exported, so it never reaches `current`.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from entrypoint.errors import GitError, RevisionRefused

log = logging.getLogger(__name__)

TAG_PREFIX = "refs/tags/"


@dataclass(frozen=True)
class VerifySettings:
    mode: str  # off, commit, tag
    allowed_signers: Path | None
    gpg_keyring: Path | None


class Verifier:
    def __init__(self, settings: VerifySettings, home: Path) -> None:
        self.settings = settings
        self.gnupg_home = home / "gnupg"

    @property
    def enabled(self) -> bool:
        return self.settings.mode != "off"

    def git_config(self) -> list[str]:
        """`-c` options for git verify-*: where the allowed SSH signers are."""
        if self.settings.allowed_signers is None:
            return ["-c", "gpg.ssh.allowedSignersFile=/dev/null"]
        return ["-c", f"gpg.ssh.allowedSignersFile={self.settings.allowed_signers}"]

    def environment(self) -> dict[str, str]:
        """GNUPGHOME with exactly the allowed GPG keys, imported afresh (rotation works)."""
        if self.settings.gpg_keyring is None:
            return {"GNUPGHOME": str(self.gnupg_home / "empty")}
        shutil.rmtree(self.gnupg_home, ignore_errors=True)
        self.gnupg_home.mkdir(mode=0o700, parents=True)
        result = subprocess.run(
            [
                "gpg",
                "--batch",
                "--quiet",
                "--homedir",
                str(self.gnupg_home),
                "--import",
                str(self.settings.gpg_keyring),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise GitError(f"LIVE_PULL_GPG_KEYRING could not be imported: {result.stderr.strip()}")
        return {"GNUPGHOME": str(self.gnupg_home)}

    def target(self, sha: str, ref_name: str | None, fetched: str) -> tuple[str, str]:
        """What to verify: ("commit", sha) or ("tag", the fetched tag object's ref)."""
        if self.settings.mode == "commit":
            return "commit", sha
        if ref_name is None or not ref_name.startswith(TAG_PREFIX):
            raise RevisionRefused(sha, f"LIVE_PULL_VERIFY=tag but {ref_name or sha} is not a tag")
        return "tag", fetched


def refusal_reason(output: str) -> str:
    """git's words for why, reduced to a short reason."""
    text = output.lower()
    if "no signature found" in text or "cannot verify a non-" in text:
        return "unsigned"
    if "no principal matched" in text or "no public key" in text or "can't check signature" in text:
        return "signed by a key that is not allowed"
    if "bad signature" in text or "signature verification failed" in text:
        return "bad signature"
    last = [line for line in output.strip().splitlines() if line.strip()]
    return f"signature not accepted: {last[-1] if last else 'unknown'}"

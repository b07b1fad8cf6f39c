"""Repositories held by the test Hub server (tests/hub_server.py): commits of files, LFS objects, tokens."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field


def git_blob_sha1(content: bytes) -> str:
    """Git's blob object id: sha1 of ``b"blob {size}\\0" + content``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    content: bytes
    lfs_oid: str | None = None  # sha256 when stored with LFS

    @property
    def oid(self) -> str:
        """The git blob id (of the pointer file for LFS files)."""
        return git_blob_sha1(lfs_pointer(self.lfs_oid, len(self.content)) if self.lfs_oid else self.content)


@dataclass
class Commit:
    sha: str
    message: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        return next((commit for commit in self.commits if commit.sha == revision), None)


@dataclass
class HubState:
    """Everything the server holds; tests read it to check what was pushed."""

    tokens: dict[str, tuple[str, str]]  # token -> (user, "read" | "write")
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    unhandled: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

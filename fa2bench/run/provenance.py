"""Which code a run ran: the commit, whether the tree differed from it, and a content hash anyone can check later.

``tree_hash`` is sha256 over the ``.py`` files of ``fa2bench/`` and ``kernels/`` (sorted paths, each path and its
bytes), computed from the files on disk; ``commit_tree_hash`` computes the same over a commit's files with git.
``dirty`` is therefore a fact about the tree, not an environment variable: where git knows the commit it is
``tree_hash != commit_tree_hash``; where it cannot (a copy of the tree without the commit) the recorded
``tree_hash`` lets anyone compare the run's code with a commit afterwards.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("fa2bench", "kernels")


def _digest(files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for path, data in sorted(files):
        h.update(path.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def tree_hash(root: Path = ROOT, tops: tuple[str, ...] = SOURCES) -> str:
    """The content hash of the source files on disk under ``root`` (of ``tops``, its top folders)."""
    files = [(p.relative_to(root).as_posix(), p.read_bytes()) for top in tops
             for p in (root / top).rglob("*.py") if "__pycache__" not in p.parts]
    return _digest(files)


def kernels_hash(root: Path = ROOT) -> str:
    """``tree_hash`` of ``kernels/`` alone: two runs with the same one ran the same kernels, their defaults
    included (a resume compares it, ``results.continue_meta``)."""
    return tree_hash(root, ("kernels",))


def _git(root: Path, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], input=data, capture_output=True, timeout=30)


def commit_tree_hash(commit: str, root: Path = ROOT) -> str | None:
    """The content hash of ``commit``'s source files, or None when git does not know the commit."""
    try:
        listed = _git(root, "ls-tree", "-r", "--name-only", "-z", commit, "--", *SOURCES)
        if listed.returncode != 0:
            return None
        paths = [p for p in listed.stdout.decode().split("\0") if p.endswith(".py")]
        files = [(p, _git(root, "show", f"{commit}:{p}").stdout) for p in paths]
    except (OSError, subprocess.SubprocessError):
        return None
    return _digest(files)


def git_state(root: Path = ROOT) -> dict:
    """commit, dirty, tree_hash and where the commit came from (git, or FA2BENCH_GIT_COMMIT on a copy of the
    tree whose .git is missing or stale). ``dirty`` is None only when nothing can tell."""
    here = tree_hash(root)
    named = os.environ.get("FA2BENCH_GIT_COMMIT")
    commit, source = named, "FA2BENCH_GIT_COMMIT"
    if not named:
        try:
            head = _git(root, "rev-parse", "HEAD")
            commit, source = (head.stdout.decode().strip(), "git") if head.returncode == 0 else (None, None)
        except (OSError, subprocess.SubprocessError):
            commit, source = None, None
    known = commit_tree_hash(commit, root) if commit else None
    dirty = (here != known) if known else None
    state = {"commit": commit, "dirty": dirty, "tree_hash": here, "kernels_hash": kernels_hash(root),
             "source": source, "verified": known is not None}
    if known is None and os.environ.get("FA2BENCH_GIT_DIRTY") in ("0", "1"):  # what the launcher said, kept apart
        state["dirty_claimed"] = os.environ["FA2BENCH_GIT_DIRTY"] == "1"
    return state

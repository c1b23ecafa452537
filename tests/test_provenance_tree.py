"""git_state computes ``dirty`` from the tree: a content hash of fa2bench/ and kernels/ against the commit's."""
import shutil
import subprocess

import pytest

from fa2bench.run import provenance


@pytest.fixture
def repo(tmp_path):
    for top in provenance.SOURCES:
        (tmp_path / top).mkdir()
        (tmp_path / top / "a.py").write_text(f"# {top}\n")
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    return tmp_path


def test_clean_then_dirty_from_the_files(repo, monkeypatch):
    monkeypatch.delenv("FA2BENCH_GIT_COMMIT", raising=False)
    clean = provenance.git_state(repo)
    assert clean["dirty"] is False and clean["verified"] and clean["source"] == "git"
    assert clean["tree_hash"] == provenance.commit_tree_hash(clean["commit"], repo)
    (repo / "kernels" / "a.py").write_text("# changed\n")
    assert provenance.git_state(repo)["dirty"] is True


def test_a_copy_without_git_is_checked_against_the_named_commit(repo, tmp_path_factory, monkeypatch):
    commit = provenance.git_state(repo)["commit"]
    copy = tmp_path_factory.mktemp("copy")
    for top in provenance.SOURCES:
        shutil.copytree(repo / top, copy / top)
    monkeypatch.setenv("FA2BENCH_GIT_COMMIT", commit)
    monkeypatch.setenv("FA2BENCH_GIT_DIRTY", "0")
    state = provenance.git_state(copy)  # no .git here: dirty cannot be verified, the hash is recorded
    assert state["dirty"] is None and state["tree_hash"] == provenance.commit_tree_hash(commit, repo)
    (copy / "fa2bench" / "a.py").write_text("# edited on the GPU machine\n")
    assert provenance.git_state(copy)["tree_hash"] != provenance.commit_tree_hash(commit, repo)

"""The code version a run records (base/provenance.py), against a real temporary git
repository: reuse of a run trusts it, so each state of a tree is checked, not assumed."""

from __future__ import annotations

import subprocess

import pytest

from mnistcnn.base import provenance


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    """A repository whose package folder holds a committed __init__.py."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VERSION = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return pkg, head


def test_a_clean_tree_records_its_commit_and_no_changes(repo):
    pkg, head = repo
    assert provenance.git_state(pkg) == {"git_commit": head, "git_dirty": False,
                                         "git_changes": None}


def test_a_modified_file_makes_the_tree_dirty_and_names_the_changes(repo):
    pkg, head = repo
    (pkg / "__init__.py").write_text("VERSION = 2\n")
    first = provenance.git_state(pkg)
    assert first["git_commit"] == head and first["git_dirty"] is True
    assert first["git_changes"] and provenance.git_state(pkg) == first  # same changes, same id
    (pkg / "__init__.py").write_text("VERSION = 3\n")
    assert provenance.git_state(pkg)["git_changes"] != first["git_changes"]


def test_an_untracked_file_alone_leaves_the_tree_clean(repo):
    pkg, head = repo
    (pkg / "notes.txt").write_text("scratch\n")
    assert provenance.git_state(pkg) == {"git_commit": head, "git_dirty": False,
                                         "git_changes": None}


def test_outside_a_repository_nothing_is_claimed(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    assert provenance.git_state(tmp_path) == {"git_commit": None, "git_dirty": None,
                                              "git_changes": None}


def test_two_runs_of_one_dirty_tree_ran_the_same_code_and_other_changes_differ():
    run = {"mnistcnn": "0.1.0", "git_commit": "a" * 40, "git_dirty": True,
           "git_changes": "0123", "torch": "2.0"}
    assert provenance.differences(run, dict(run)) == []
    assert provenance.differences(run, dict(run, git_changes="4567")) == [
        "the run's tree had uncommitted changes", "the tree has uncommitted changes now"]
    clean = dict(run, git_dirty=False, git_changes=None)
    assert provenance.differences(clean, dict(clean)) == []
    assert provenance.differences(clean, dict(clean, torch="2.1")) == ["torch 2.0 -> 2.1"]

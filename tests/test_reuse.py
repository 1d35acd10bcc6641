"""Reuse of identical runs (runs/reuse.py): a job finds a completed run of the same settings,
device and code under reuse.dirs and copies it instead of training; anything else trains."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_main

from mnistcnn.base.errors import UserError
from mnistcnn.studies import command

COPIED = ("metrics.jsonl", "predictions.csv", "classification.csv", "confusion.csv", "model.pt")


@pytest.fixture
def train(synthetic_dir):
    def run(folder, *extra):
        result = run_main("train", f"data.dir={synthetic_dir}", "data.val_size=200",
                          "model=tiny", "data.limit=300", "trainer.epochs=1",
                          "trainer.device=cpu", "report.enabled=false",
                          f"hydra.run.dir={folder}", *extra)
        assert result.returncode == 0, result.stderr
        return json.loads((folder / "summary.json").read_text()), result
    return run


def test_an_identical_completed_run_is_copied_not_trained(train, tmp_path):
    book = tmp_path / "book"
    first, _ = train(book / "one" / "0_a")
    copy, result = train(book / "two" / "0_b", f"reuse.dirs=[{book}]")
    assert copy == dict(first, reused_from="one/0_a")  # relative to the book
    for name in COPIED:
        assert (book / "two" / "0_b" / name).read_bytes() == \
            (book / "one" / "0_a" / name).read_bytes()
    assert "reused one/0_a (a completed run of the same settings)" in result.stdout
    # The copy keeps its own Hydra record; the copy is never a source itself.
    assert (book / "two" / "0_b" / ".hydra" / "config.yaml").is_file()
    third, _ = train(tmp_path / "three", f"reuse.dirs=[{book / 'two'},{book}]")
    assert third["reused_from"].endswith("one/0_a")


def test_another_seed_or_no_reuse_dirs_trains(train, tmp_path):
    book = tmp_path / "book"
    train(book / "one" / "0_a")
    other_seed, _ = train(book / "two" / "0_b", f"reuse.dirs=[{book}]", "seed=1")
    alone, _ = train(book / "two" / "0_c")
    assert "reused_from" not in other_seed and "reused_from" not in alone
    assert other_seed["train_time_s"] > 0 and alone["test/acc"] is not None


def test_a_run_of_other_code_is_reused_only_when_asked(train, tmp_path):
    book = tmp_path / "book"
    first, _ = train(book / "one" / "0_a")
    summary = book / "one" / "0_a" / "summary.json"
    summary.write_text(json.dumps(dict(first, git_commit="0" * 40)))
    trained, _ = train(book / "two" / "0_b", f"reuse.dirs=[{book}]")
    assert "reused_from" not in trained
    reused, result = train(book / "two" / "0_c", f"reuse.dirs=[{book}]",
                           "reuse.any_version=true")
    assert reused["reused_from"] == "one/0_a" and reused["git_commit"] == "0" * 40
    assert reused["reused_from_other_code"][0].startswith(f"git_commit {'0' * 12} -> ")
    assert "made by other code: git_commit 000000000000 -> " in result.stdout


def overrides_of(*options):
    opts = command.parse(["pooling", *options])
    return command.study_overrides("pooling", command.Path("book"), opts, command.check(opts)[1])


def test_studies_look_in_the_book_and_the_folders_named_unless_told_not_to(tmp_path):
    assert "reuse.dirs=['book']" in overrides_of()
    assert f"reuse.dirs=['book','{tmp_path}']" in overrides_of("--reuse-from", str(tmp_path))
    assert "reuse.any_version=true" in overrides_of("--reuse-any-version")
    assert not [o for o in overrides_of("--no-reuse") if o.startswith("reuse.")]
    with pytest.raises(UserError, match="--reuse-from nowhere: no such folder"):
        overrides_of("--reuse-from", "nowhere")
    with pytest.raises(UserError, match="--no-reuse with --reuse-from or --reuse-any-version"):
        overrides_of("--no-reuse", "--reuse-any-version")


def test_a_rerun_of_a_reused_run_trains(train, tmp_path):
    book = tmp_path / "book"
    train(book / "one" / "0_a")
    train(book / "two" / "0_b", f"reuse.dirs=[{book}]")
    result = run_main("train", f"rerun={book / 'two' / '0_b'}",
                      f"hydra.run.dir={book / 'two' / '1_c'}")
    assert result.returncode == 0, result.stderr
    rerun = json.loads((book / "two" / "1_c" / "summary.json").read_text())
    assert "reused_from" not in rerun and rerun["train_time_s"] > 0


def test_a_cpu_run_of_another_thread_count_is_reused_only_when_asked(train, tmp_path):
    # Sums split over another number of threads give other last digits: not the same run.
    book = tmp_path / "book"
    first, _ = train(book / "one" / "0_a")
    assert first["cpu_threads"] == torch.get_num_threads()
    summary = book / "one" / "0_a" / "summary.json"
    summary.write_text(json.dumps(dict(first, cpu_threads=first["cpu_threads"] + 1)))
    trained, _ = train(book / "two" / "0_b", f"reuse.dirs=[{book}]")
    assert "reused_from" not in trained
    reused, _ = train(book / "two" / "0_c", f"reuse.dirs=[{book}]", "reuse.any_version=true")
    assert reused["reused_from_other_code"] == [
        f"torch threads {first['cpu_threads'] + 1} -> {first['cpu_threads']}"]

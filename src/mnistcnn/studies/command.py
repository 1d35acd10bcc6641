"""`studies`: run each study as `train -m +experiment=NAME` does, then the book.

A study is a preset name or the path of a person's own study file (study_files.py). Each
study is its own `train -m` process with its sweep folder DIR/NAME/, so the study is
exactly what the preset's own command runs (and its comparison, resume and failure
handling are the sweep's); its console output goes to DIR/NAME.log. While it runs, the
finished runs are counted from the job folders' summary.json files and a progress line
goes to stderr. A failed study never stops the book; the command exits 1 at the end
when any run did not complete. --seeds N runs seeds 0..N-1 of every arm and continues an
existing book, training only the runs it lacks. --dry-run plans (timing arms that have no
finished run by a short calibration, calibration.py, and saying for each question of a
started book how many seeds would decide it and at what cost), --book-only writes the book
of finished folders, --publish copies what a reader needs to rebuild it (publish.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from mnistcnn.base import provenance, run_folder
from mnistcnn.base.errors import FAILED_RUNS_EXIT, UserError, exit_with
from mnistcnn.base.formats import duration, sample_size
from mnistcnn.base.run_folder import CONFIG, REPORT, SUMMARY
from mnistcnn.base.signals import stop_signals_to
from mnistcnn.runs import job_share
from mnistcnn.runs.preflight import check_overrides, sweep_jobs
from mnistcnn.studies import book, calibration, publish, questions, study_files
from mnistcnn.studies.reuse_plan import ReusePlan
from mnistcnn.studies.study_files import StudyFile

POLL_S = 2.0  # how often a running study's folder is counted for the progress line
ENDED = ("completed", "failed", "diverged", "interrupted")  # a summary.json status: not running
# Overrides that make runs shorter than their study's protocol: the book then says so.
SHORTENING = ("trainer.epochs", "data.limit", "trainer.early_stop")


def parse(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnistcnn studies",
        description="Run studies (the study presets, all by default, or study files) at "
                    "their full protocol and seeds and write the book that answers their "
                    "questions, DIR/STUDIES.md and DIR/studies.html. KEY=VALUE overrides go "
                    "to every run. How to write a study file: docs/studies-guide.md.")
    parser.add_argument("items", nargs="*", metavar="NAME|PATH|KEY=VALUE",
                        help=f"study presets ({', '.join(study_files.preset_names())}), "
                             f"paths of study files, and overrides")
    parser.add_argument("--quick", action="store_true",
                        help="smoke size of each preset (quick=on: 1 seed, 1 epoch, 1,000 "
                             "training images); the book then says it holds no findings")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs at once, as separate processes (hydra/launcher=joblib)")
    parser.add_argument("--out", metavar="DIR",
                        help="book folder (default outputs/studies/TIME); each study's sweep "
                             "goes to DIR/NAME/")
    parser.add_argument("--resume", action="store_true",
                        help="continue the book in --out DIR: completed runs are kept")
    parser.add_argument("--seeds", metavar="N",
                        help="run seeds 0..N-1 of every arm (instead of the study file's "
                             "seed sweep); on an existing --out DIR only the runs it lacks "
                             "are trained, so a finished book grows by the new seeds")
    parser.add_argument("--reuse-from", action="append", default=[], metavar="DIR",
                        help="also reuse completed runs under DIR (a book, a sweep, a run; "
                             "repeatable): a job whose settings, device and code version "
                             "match one is copied, not trained (the book's own runs are "
                             "always looked at)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="train every run, even where an identical completed run exists, "
                             "and every trainer.epochs arm on its own")
    parser.add_argument("--reuse-any-version", action="store_true",
                        help="also reuse runs made by another code version (the book says so)")
    parser.add_argument("--reports", action="store_true",
                        help=f"also write every run's {REPORT} and plots (off by default)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every study's arms x seeds, the runs already complete in "
                             "--out DIR, a time estimate (from finished runs of the same arm, "
                             "else from a short calibration of the arm on this device) and, "
                             "for a started book, the seeds that would decide each question; "
                             "no run is made")
    parser.add_argument("--book-only", action="store_true",
                        help="write the book of --out DIR from its study folders; nothing runs")
    parser.add_argument("--publish", metavar="DEST",
                        help="after the book, copy its runs' small files (configs, metrics, "
                             "summaries, per-class CSVs; no checkpoints) to DEST and write the "
                             "book there from them alone")
    return parser.parse_intermixed_args(args)


def seeds_override(n: int) -> str:
    return "seed=" + ",".join(str(s) for s in range(n))


def with_seeds(overrides: Sequence[str], n: int) -> list[str]:
    """overrides with seeds 0..n-1 in place of any seed they set. Hydra's sweeper puts a
    key that the command line sets where the study file's sweep has it, so the jobs come
    in the file's order (for the presets: each arm's seeds together)."""
    parser = OverridesParser.create()
    kept = [o for o in overrides if parser.parse_override(o).key_or_group != "seed"]
    return [*kept, seeds_override(n)]


def check_seeds(opts: argparse.Namespace, overrides: Sequence[str]) -> int | None:
    """--seeds N as a number, or None when not given."""
    if opts.seeds is None:
        return None
    try:
        n = int(opts.seeds)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--seeds {opts.seeds}: must be a whole number >= 1 (the seeds "
                        f"0..N-1 of every arm)")
    if opts.book_only:
        raise UserError("--seeds and --book-only: --book-only trains nothing; drop one")
    typed = [o for o in overrides if o.lstrip("+~").startswith("seed=")]
    if typed:
        raise UserError(f"--seeds {n} and {typed[0]}: choose one (--seeds {n} runs seeds "
                        f"0..{n - 1})")
    return n


def check(opts: argparse.Namespace) -> tuple[list[StudyFile], list[str]]:
    """(studies, overrides); a mistake is a UserError before anything runs. --seeds N
    comes back as the override of the seed sweep."""
    names = [i for i in opts.items if "=" not in i]
    overrides = [i for i in opts.items if "=" in i]
    seeds = check_seeds(opts, overrides)
    if seeds is not None:
        overrides = with_seeds(overrides, seeds)
    if opts.jobs < 1:
        raise UserError(f"--jobs {opts.jobs}: must be >= 1")
    if opts.jobs > 1 and importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        raise UserError("--jobs needs Hydra's joblib launcher; install it with "
                        "pip install -e \".[sweep]\" (or pip install hydra-joblib-launcher)")
    if opts.resume and not opts.out:
        raise UserError("--resume continues a book: name its folder with --out DIR")
    if opts.book_only and not opts.out:
        raise UserError("--book-only writes the book of finished study folders: name their "
                        "book folder with --out DIR")
    if opts.book_only and opts.dry_run:
        raise UserError("--book-only and --dry-run: choose one (neither runs anything)")
    if opts.no_reuse and (opts.reuse_from or opts.reuse_any_version):
        raise UserError("--no-reuse with --reuse-from or --reuse-any-version: choose one")
    missing = [d for d in opts.reuse_from if not Path(d).is_dir()]
    if missing:
        raise UserError(f"--reuse-from {missing[0]}: no such folder; name a folder of runs "
                        f"(a book, a sweep or a run)")
    if opts.book_only:  # the folders are what counts; a study file need not be at hand
        return [StudyFile(Path(n).stem if study_files.is_path(n) else n, Path(n), preset=False)
                for n in dict.fromkeys(names)], overrides
    return study_files.resolve(names), overrides


def study_overrides(name: str, out: Path, opts: argparse.Namespace,
                    overrides: list[str]) -> list[str]:
    """The `train -m` overrides of one study of the book."""
    extra = [f"+experiment={name}", f"hydra.sweep.dir={out / name}"]
    extra += ["quick=on"] if opts.quick else []
    # --seeds continues a book: the runs it has are kept, only the missing ones train.
    extra += ["resume=true"] if opts.resume or opts.seeds is not None else []
    # A book is ~90 runs: each run's report (t-SNE alone ~5 s) is written only on request.
    if not opts.reports and not any(o.lstrip("+").startswith("report.") for o in overrides):
        extra.append("report.enabled=false")
    if opts.jobs > 1:
        extra += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={opts.jobs}"]
    if not opts.no_reuse:  # the book itself, then the folders named
        dirs = ",".join(quoted(d) for d in [str(out), *opts.reuse_from])
        extra += [f"reuse.dirs=[{dirs}]"]
        extra += ["reuse.any_version=true"] if opts.reuse_any_version else []
    return extra + overrides


def quoted(path: str) -> str:
    """A path as a quoted element of a Hydra override's list: commas, spaces and = stay in
    the path, and its quotes are escaped."""
    return "'" + path.replace("'", "\\'") + "'"


def count_ended(folder: Path, since: float) -> int:
    """Runs of a sweep folder that have ended, from their summary.json: every completed
    one, and those that failed, diverged or were interrupted at or after `since` (a
    time.time()); older ones are about to run again in a resumed book."""
    ended = 0
    for path in folder.glob(f"*/{SUMMARY}"):
        try:
            status = run_folder.read_json(path).get("status")
            ended += status == "completed" or (status in ENDED and
                                               path.stat().st_mtime >= since)
        except (OSError, ValueError, UserError):
            pass  # being written: counted on the next poll
    return ended


class Progress:
    """`[12/90 runs] 3m10s elapsed, ~20m left` on stderr whenever the count moves; the
    estimate is the mean time of the runs finished by this command (runs already done when
    a resumed book started cost nothing)."""

    def __init__(self, total: int, done_before: int):
        self.total, self.before, self.shown = total, done_before, -1
        self.start = time.monotonic()

    def update(self, done: int) -> None:
        if done == self.shown:
            return
        self.shown = done
        elapsed = time.monotonic() - self.start
        new = done - self.before
        left = (f", ~{duration(elapsed / new * (self.total - done))} left"
                if 0 < new and done < self.total else "")
        print(f"[{done}/{self.total} runs] {duration(elapsed)} elapsed{left}",
              file=sys.stderr, flush=True)


def run_study(overrides: list[str], log_path: Path, folder: Path, progress: Progress,
              done_elsewhere: int) -> tuple[int, int | None]:
    """One `train -m` in a child process: (its exit code, the signal that stopped the book
    or None). SIGINT and SIGTERM are passed on to the child, which stops after the batch in
    flight and records its run as interrupted; the book stops once the child has."""
    command = [sys.executable, "-m", "mnistcnn", "train", "-m", *overrides]
    stopped: list[int] = []
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        def forward(signum: int, _frame) -> None:
            stopped.append(signum)
            child.send_signal(signum)

        with stop_signals_to(forward):
            while True:
                try:
                    code = child.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    progress.update(done_elsewhere + count_ended(folder, start))
                    continue
                progress.update(done_elsewhere + count_ended(folder, start))
                return code, (stopped[0] if stopped else None)


def book_args(studies: Sequence[StudyFile], out: Path, opts: argparse.Namespace,
              overrides: list[str], search_root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(each study's `train -m` overrides, the search path override), people's study files
    copied where Hydra finds them (search_root)."""
    search = study_files.search_overrides(studies, search_root)
    per_study = {s.name: study_overrides(s.name, out, opts, [*search, *overrides])
                 for s in studies}
    if not opts.no_reuse:
        for args in per_study.values():
            args += shared_epochs(args)
    return per_study, search


def shared_epochs(study_args: list[str]) -> list[str]:
    """reuse.shared_epochs=[...] for a study whose sweep varies trainer.epochs: its arms
    that differ only there train once, to the longest (runs/shared_prefix.py)."""
    jobs = sweep_jobs(study_args)
    levels = study_files.swept_levels(list(jobs) if jobs is not None else []).get(
        "trainer.epochs")
    return [f"reuse.shared_epochs=[{','.join(levels)}]"] if levels else []


FROM_RUNS = "from finished runs of the same arm"


def estimate_text(pending: int, timed_s: float, timed: int, calibrated_s: float = 0.0,
                  calibrated: int = 0, how: str = "", failed: Sequence[str] = ()) -> str:
    """How long the pending runs take, and where that comes from: finished runs of the
    same arm, a calibration of the arm on this device, or both."""
    if pending == 0:
        return ""
    sources = []
    if timed:
        sources.append(FROM_RUNS if timed == pending else f"{timed} {FROM_RUNS}")
    if calibrated:
        sources.append(f"calibrated: {how}" if calibrated == pending
                       else f"{calibrated} calibrated: {how}")
    if timed + calibrated < pending:  # only where a calibration could not run
        why = f" ({failed[0]})" if failed else ""
        if not timed + calibrated:
            return f"no estimate{why}"
        sources.append(f"no estimate for {pending - timed - calibrated}{why}")
    return f"~{duration(timed_s + calibrated_s, estimate=True)} ({'; '.join(sources)})"


def plan_estimate(p: study_files.Plan, how: str) -> str:
    return estimate_text(p.to_train, p.timed_s, p.timed, p.calibrated_s, p.calibrated, how,
                         p.failed)


def calibrate(plans: Sequence[study_files.Plan], per_study: dict[str, list[str]],
              calibrator: calibration.Calibrator) -> None:
    """Time the runs of every arm that has no finished run by a calibration of the arm."""
    for p in plans:
        for arm, (job, count) in p.untimed.items():
            try:
                seconds = calibrator.run_seconds(job)
            except UserError as e:  # its data or its config: the runs would stop there too
                label = study_files.arm_label(p.name, arm, per_study[p.name])
                p.failed.append(f"{p.name} {label}: {e}")
                continue
            p.calibrated_s += seconds * count
            p.calibrated += count


def answers_of(out: Path, name: str) -> list[questions.Answer]:
    """The answers a book of out's runs gives the study's questions now, read without
    drawing or writing anything in out."""
    return book.load(out, [name], figures=False).studies[0].answers


def decided_text(answer: questions.Answer, n: str) -> str:
    """What an answer without seeds to add says: decided, described without a test, or
    open with no estimate (too few runs to test, or more seeds than is practical)."""
    if not answer.contrasts or answer.question.procedure == "describe":
        return f"described at {n}, with no test for more seeds to decide"
    if any(c.open or c.untested for c in answer.contrasts):
        return f"not decided at {n}, and no estimate of the seeds that would decide it"
    return f"decided at {n}"


def question_lines(p: study_files.Plan, overrides: list[str], out: Path,
                   calibrator: calibration.Calibrator, reusing: ReusePlan) -> list[str]:
    """Each question of a started study: decided, or the seeds per arm that would decide it
    (Answer.seeds_needed: the N of --seeds N) and what --seeds N would add to the book, timed
    as the plan times runs (what it would reuse or share costing nothing)."""
    lines, costs = [], {}
    for number, answer in enumerate(answers_of(out, p.name), 1):
        head = f"  Q{number} {answer.question.ask}"
        needed = answer.seeds_needed
        if not needed:
            lines.append(f"{head}: {decided_text(answer, sample_size(p.finished))}")
            continue
        if needed not in costs:
            more = study_files.plan(p.name, with_seeds(overrides, needed), out / p.name,
                                    reusing.fork())
            calibrate([more], {p.name: overrides}, calibrator)
            estimate = plan_estimate(more, calibrator.how)
            costs[needed] = (f"adds {more.pending} runs"
                             + reuse_text(more.reused, more.shared, more.shared_epochs)
                             + (f", {estimate}" if estimate else ""))
        lines.append(f"{head}: {needed} seeds per arm would decide it: --seeds {needed} "
                     f"{costs[needed]}")
    return lines


def reuse_text(reused: int, shared: int, shared_epochs: int) -> str:
    """What a plan will not train: runs reused, and runs written from a longer arm."""
    parts = [f"{reused} reused from identical runs"] if reused else []
    if shared:
        parts.append(f"{shared} written from longer runs' first epochs, {shared_epochs} "
                     f"epochs not trained")
    return f" ({'; '.join(parts)})" if parts else ""


def dry_run(per_study: dict[str, list[str]], out: Path, opts: argparse.Namespace) -> None:
    """The plan of the book on stdout; no run is made and nothing is written. Arms with no
    finished run are timed by a calibration here (in a scratch folder, then deleted); runs
    that will be reused (reuse_plan.py) take no time."""
    resuming = out.is_dir()
    start = ReusePlan([*([str(out)] if resuming else []), *opts.reuse_from],
                      opts.reuse_any_version, enabled=not opts.no_reuse,
                      threads=job_share.planned_threads(opts.jobs))
    reusing = start.fork()  # the book's runs in order; a question's extra seeds from start
    plans = [study_files.plan(name, args, out / name if resuming else None, reusing)
             for name, args in per_study.items()]
    calibrator = calibration.Calibrator()
    untimed = sum(len(p.untimed) for p in plans)
    if untimed:
        print(f"timing {untimed} arm(s) with no finished run: {calibrator.how}, once per "
              f"distinct config ...", file=sys.stderr, flush=True)
    calibrate(plans, per_study, calibrator)
    if untimed:
        print(f"timed {len(calibrator.rates)} distinct config(s) in "
              f"{duration(calibrator.spent_s)}", file=sys.stderr, flush=True)
    for p in plans:
        line = f"{p.name}: {p.arms} arm(s) x {p.seeds} seed(s) = {p.runs} runs"
        if resuming:
            line += f"; {p.complete} complete in {out / p.name}, {p.pending} to run"
        line += reuse_text(p.reused, p.shared, p.shared_epochs)
        estimate = plan_estimate(p, calibrator.how)
        print(line + (f"; {estimate}" if estimate else ""))
        if resuming and any(p.finished):
            for text in question_lines(p, per_study[p.name], out, calibrator, start):
                print(text)
    pending = sum(p.pending for p in plans)
    estimate = estimate_text(sum(p.to_train for p in plans), sum(p.timed_s for p in plans),
                             sum(p.timed for p in plans), sum(p.calibrated_s for p in plans),
                             sum(p.calibrated for p in plans), calibrator.how,
                             [f for p in plans for f in p.failed])
    saved = reuse_text(*(sum(getattr(p, k) for p in plans)
                         for k in ("reused", "shared", "shared_epochs")))
    print(f"in all: {sum(p.runs for p in plans)} runs, {pending} to run" + saved
          + (f"; {estimate}" if estimate else "") + "; no study was run")


def book_names(out: Path, studies: Sequence[StudyFile], record: dict) -> list[str]:
    """The studies of the book: those named, else those book.json records, else every
    folder of DIR that holds runs."""
    if studies:
        return [s.name for s in studies]
    recorded = list(record.get("studies", {}))
    return recorded or sorted(p.name for p in out.iterdir()
                              if p.is_dir() and any(p.glob(f"*/{CONFIG}")))


def write_book(out: Path, names: Sequence[str], opts: argparse.Namespace) -> book.Book:
    """The book of out, and its publish with --publish. A published book rebuilt in place
    (--publish naming out) gets only its STUDIES.md: a publish keeps no studies.html."""
    in_place = bool(opts.publish) and Path(opts.publish).resolve() == out.resolve()
    if not in_place:
        t_book = time.monotonic()
        written = book.write(out, names)
        print(f"book -> {out / 'STUDIES.md'} ({out / 'studies.html'}) after "
              f"{duration(time.monotonic() - t_book)}", file=sys.stderr)
    if opts.publish:
        published = publish.publish(out, names, Path(opts.publish))
        print(f"published -> {published.out_dir / 'STUDIES.md'}", file=sys.stderr)
        if in_place:
            return published
    return written


def run_studies(args: list[str]) -> None:
    opts = parse(args)
    studies, overrides = check(opts)
    out = Path(opts.out or Path("outputs/studies") / datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S"))
    if (opts.resume or opts.book_only) and not out.is_dir():
        raise UserError(f"{out} does not exist; pass the --out DIR of an existing book")
    if opts.book_only:
        record_path = out / book.BOOK_FILE
        record = run_folder.read_json(record_path) if record_path.is_file() else {}
        write_book(out, book_names(out, studies, record), opts)
        return
    started = [s.name for s in studies if (out / s.name).is_dir()]
    if started and not opts.resume and not opts.dry_run and opts.seeds is None:
        raise UserError(f"{out} already holds {', '.join(started)}; add --resume to continue "
                        f"that book (or --seeds N to add seeds to it), or choose another "
                        f"--out DIR")
    with tempfile.TemporaryDirectory() as scratch:
        per_study, search = book_args(studies, out, opts, overrides, Path(scratch))
        blocks = {s.name: study_files.check_questions(s, search) for s in studies}
        if opts.dry_run:  # composing the plan checks the keys; models are built by the runs
            dry_run(per_study, out, opts)
            return
        totals = {}
        for name, study_args in per_study.items():
            check_overrides(study_args, multirun=True)  # a typo costs nothing: no folder, no run
            jobs = sweep_jobs(study_args)
            totals[name] = sum(1 for _ in jobs) if jobs is not None else 0  # 0: not listable
    per_study, _ = book_args(studies, out, opts, overrides, out / study_files.BOOK_COPIES)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / book.BOOK_FILE
    record = run_folder.read_json(record_path) if record_path.is_file() else {}
    record.setdefault("wall_s", {})
    record["machine"] = provenance.machine()
    # --out relative to where it ran: a book never carries the machine's own folders.
    record["commands"] = [*record.get("commands", []), provenance.recorded_command(
        ["python", "-m", "mnistcnn", "studies"], args, ["--out"])]
    # The questions of each study, for its section before its runs exist; and the order.
    record["studies"] = {**record.get("studies", {}), **blocks}
    shortening = [o for o in overrides if o.lstrip("+~").startswith(SHORTENING)]
    if opts.quick or shortening:
        record["shortened"] = book.QUICK if opts.quick else " ".join(shortening)
    run_folder.write_json(record_path, record)

    # A resumed book reruns every run that did not complete; those that did are done. Where
    # the sweep changed (--seeds N), the earlier runs first move to their jobs' new numbers.
    for name, study_args in per_study.items():
        moved = study_files.renumber_jobs(out / name, study_args)
        if moved:
            print(f"{name}: {moved} earlier run folder(s) renamed to their jobs' numbers in "
                  f"this sweep", file=sys.stderr, flush=True)
    now = time.time()
    done = {n: count_ended(out / n, since=now) for n in per_study}  # the completed ones
    total = sum(totals.values())
    progress = Progress(total, sum(done.values()))
    print(f"{len(per_study)} studies, {total} runs -> {out}/", file=sys.stderr, flush=True)
    failed_studies = []
    resume_hint = shlex.join(["python", "-m", "mnistcnn", "studies",
                              *(a for a in args if a != "--resume"),
                              *([] if opts.out else ["--out", str(out)]), "--resume"])
    for name in per_study:
        t0, started_at = time.monotonic(), time.time()
        elsewhere = sum(done.values()) - done[name]
        code, signum = run_study(per_study[name], out / f"{name}.log", out / name, progress,
                                 elsewhere)
        record["wall_s"][name] = round(record["wall_s"].get(name, 0) + time.monotonic() - t0, 1)
        run_folder.write_json(record_path, record)
        if signum is not None:
            print(f"interrupted; continue with: {resume_hint}", file=sys.stderr)
            stop = KeyboardInterrupt()
            stop.signum = signum  # __main__ exits with 128 + signum
            raise stop
        done[name] = count_ended(out / name, since=started_at)
        if code != 0:
            failed_studies.append(name)
            print(f"study {name} exited with {code}; see {out / name}.log", file=sys.stderr,
                  flush=True)
    written = write_book(out, book_names(out, [], record), opts)
    if written.failed or failed_studies:
        errors = f"; studies with errors: {', '.join(failed_studies)}" if failed_studies else ""
        exit_with(f"{len(written.failed)} run(s) did not complete{errors}; see "
                  f"{out / 'STUDIES.md'}; rerun them with: {resume_hint}", FAILED_RUNS_EXIT)

"""`mirakl-cancel run FILE --store postgresql://... --job NAME`: one job, many workers.

Every worker runs the same command. The first to find no job of that name checks the
file and stages the plan in the database (all or nothing); the others check that
their file is the same (sha256) and join. Each then runs the usual job engine on the
requests it claims (`PostgresJobStore.claims`), with its client on the fleet's shared
pacing (rate limit, 429 pause, read ceilings on the database clock), until the fleet's
job is complete; then it writes the whole job's report and summary. `mirakl-cancel
report` writes that report again at any time, from the database or from a journal.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from .._constants import DEFAULT_LEASE
from .._http.auth import Auth
from .._stores.base import JobStore, JournalBusyError, JournalError, RequestState
from .._stores.pgjob import JobMismatchError, PostgresJobStore
from .._stores.postgres import PostgresStore
from .._stores.sqlite import Journal, PlanStaging, SqliteStore
from ..errors import StoreError
from .input import InputError
from .job import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_SOME_FAILED,
    JobOptions,
    _missing_credentials,
    _run_with_store,
    _sha256,
    _stage_input,
    check_job_paths,
    print_dry_run,
    tally,
)
from .progress import ProgressLogHandler
from .report import JobCounts, summary_table

__all__ = ["report_job", "run_fleet_job"]

def run_fleet_job(options: JobOptions, auth: Auth | None, *, dsn: str, name: str,
                  lease: float = DEFAULT_LEASE, out: TextIO | None = None,
                  err: TextIO | None = None,
                  log_handler: ProgressLogHandler | None = None) -> int:
    """Create or join the fleet job `name` in `dsn`, work it to the end, report."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        check_job_paths(options, journal_file=False)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    if auth is None and not options.dry_run:
        return _missing_credentials(err)
    try:
        store = PostgresStore(dsn)
    except ValueError as exc:
        print(f"error: --store: {exc}", file=err)
        return EXIT_BAD_INPUT
    return asyncio.run(_fleet(options, auth, store, name, lease, out, err, log_handler))


async def _fleet(options: JobOptions, auth: Auth | None, store: PostgresStore, name: str,
                 lease: float, out: TextIO, err: TextIO,
                 log_handler: ProgressLogHandler | None) -> int:
    job = PostgresJobStore(store, name, lease=lease,
                           claim_batch=max(1, options.concurrency))
    try:
        try:
            await job.open()
            joined = await _create_or_join(job, options, err, out)
        except JournalError as exc:
            print(f"error: {exc}", file=err)
            return EXIT_BAD_INPUT
        except _Stop as stop:
            return stop.code
        assert auth is not None
        try:
            await job.join(resend_unapplied=options.reconcile is not None
                           and options.reconcile.resend)
        except JournalError as exc:
            print(f"error: {exc}", file=err)
            return EXIT_BAD_INPUT
        # Not "resumed": joining is how every worker but the first starts.
        del joined
        return await _run_with_store(options, auth, job, False, out, err, log_handler,
                                     shared=store)
    finally:
        await job.aclose()
        await store.close()


async def _create_or_join(job: PostgresJobStore, options: JobOptions, err: TextIO,
                          out: TextIO) -> bool:
    """The job in place: True when joined (it existed), False when this worker created
    it; `_Stop` after printing why not (or after a dry run)."""
    path = options.input_path
    assert path is not None
    digest = _sha256(path)
    info = await job.job()
    if info is None:
        with PlanStaging() as staging:
            try:
                kind = _stage_input(path, options, staging, err)
            except InputError as exc:
                print(f"error: {exc}", file=err)
                raise _Stop(EXIT_BAD_INPUT) from None
            if kind is None:
                raise _Stop(EXIT_BAD_INPUT)
            if options.dry_run:
                print_dry_run(staging, options.max_lines_per_request, out)
                raise _Stop(EXIT_OK)
            created = await job.create(
                staging, input_path=str(path.resolve()), input_sha256=digest,
                input_format=kind.value, base_url=options.base_url,
                max_lines=options.max_lines_per_request,
                options={"max_lines_per_request": options.max_lines_per_request,
                         "skip_invalid": options.skip_invalid})
        if created:
            if not options.quiet:
                total = sum((await job.counts()).values())
                print(f"fleet job {job.name!r} created in {job.store!r} ({total} request(s))",
                      file=err)
            return False
        info = await job.job()
        assert info is not None
    try:
        job.check_same_input(info, digest)
    except JobMismatchError as exc:
        print(f"error: {exc}", file=err)
        raise _Stop(EXIT_BAD_INPUT) from None
    if info.base_url.rstrip("/") != options.base_url.rstrip("/"):
        print(f"error: the fleet job {job.name!r} sends to {info.base_url}, not "
              f"{options.base_url}: every worker must use the same base URL", file=err)
        raise _Stop(EXIT_BAD_INPUT)
    if options.dry_run:
        print(f"dry run: the fleet job {job.name!r} exists already (same file); nothing "
              "sent", file=out)
        raise _Stop(EXIT_OK)
    if not options.quiet:
        counts = await job.counts()
        summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
        print(f"joining fleet job {job.name!r} ({summary})", file=err)
    return True


class _Stop(Exception):
    """Nothing to run: the job could not be created or joined (said why), or a dry run."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def report_job(report_path: Path | None, *, dsn: str | None = None, name: str | None = None,
               journal: Path | None = None, out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    """`mirakl-cancel report`: the whole job's report and outcome table, from a fleet's
    database (`dsn` + `name`) or a journal file. Nothing is sent; the exit code is the
    run's (0 when every row SUCCEEDED, 1 otherwise, 2 when there is no such job)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        check_job_paths(JobOptions(input_path=None, base_url="", journal_path=journal,
                                   report_path=report_path), journal_file=journal is not None)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    if journal is None:
        assert dsn is not None and name is not None
        return asyncio.run(_fleet_report(report_path, dsn, name, out, err))
    try:
        opened = Journal.open(journal)
    except (JournalBusyError, JournalError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        job = opened.job()
        if job is None:
            print(f"error: {journal} holds no job", file=err)
            return EXIT_BAD_INPUT
        if not job.plan_complete:
            print("warning: the job stopped before its whole plan was journaled: this report "
                  "has the rows planned so far (running the job again plans the rest)",
                  file=err)
        return asyncio.run(_journal_report(opened, report_path, out, err))
    finally:
        opened.close()


async def _journal_report(journal: Journal, report_path: Path | None, out: TextIO,
                          err: TextIO) -> int:
    store = SqliteStore(journal)
    try:
        return await _write(store, report_path, out, err)
    finally:
        await store.aclose()


async def _fleet_report(report_path: Path | None, dsn: str, name: str, out: TextIO,
                        err: TextIO) -> int:
    try:
        shared = PostgresStore(dsn)
    except ValueError as exc:
        print(f"error: --store: {exc}", file=err)
        return EXIT_BAD_INPUT
    fleet = PostgresJobStore(shared, name)
    try:
        await fleet.open()
        if await fleet.job() is None:
            print(f"error: no fleet job {name!r} in {shared!r}", file=err)
            return EXIT_BAD_INPUT
        return await _write(fleet, report_path, out, err)
    except (JournalError, StoreError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    finally:
        await fleet.aclose()
        await shared.close()


async def _write(store: JobStore, report_path: Path | None, out: TextIO, err: TextIO) -> int:
    counts = JobCounts()
    lines, failed = await tally(store, report_path, counts, err)
    print(summary_table(counts, figures=False), file=out)
    states = await store.counts()
    open_ = states[RequestState.PENDING] + states[RequestState.SENDING] + \
        states[RequestState.ACCEPTED]
    if open_:
        print(f"the job is not finished: {open_} request(s) not yet final", file=out)
    if report_path is not None and not failed:
        print(f"report: {report_path}", file=out)
    if failed:
        return EXIT_SOME_FAILED
    return EXIT_OK if lines and counts.rows_by_outcome["SUCCEEDED"] == lines \
        else EXIT_SOME_FAILED

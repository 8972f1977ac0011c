"""`ttm-data fetch NAME DEST` downloads a public dataset with checksums; `ttm-data check ROOT` reports what a
loader would read."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ttm_experiments.data.check import butppg_report, format_report
from ttm_experiments.data.fetch import BASE_URL_ENV, BUTPPG, CHECKSUMS, DATASETS, RETRIES, default_base_url, fetch
from ttm_experiments.errors import UserError


class WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


EXAMPLES = """examples:
  ttm-data fetch butppg data/butppg --ppg-only     # the files the BUT-PPG loader reads; rerun to resume
  ttm-data fetch butppg data/butppg --base-url file:///mnt/mirror/files/
  ttm-data check data/butppg                       # what dataset=butppg would read and exclude
  ttm-data check data/butppg --json

then: ttm-train dataset=butppg dataset.root=data/butppg"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ttm-data",
        description="Download a public dataset with checksums, or check what a loader reads from a folder.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download a dataset (verified against its SHA256SUMS.txt; rerun to resume)")
    f.add_argument("name", help=f"dataset: {', '.join(sorted(DATASETS))}")
    f.add_argument("dest", type=Path, help="directory to download into (created)")
    f.add_argument(
        "--base-url",
        default=None,
        help=f"the directory above <slug>/<version>/ on a mirror (default ${BASE_URL_ENV}, else "
        "PhysioNet's https://physionet.org/files/); file:// works for a local mirror",
    )
    f.add_argument(
        "--ppg-only",
        action="store_true",
        help="only the files the loader reads (the CSVs, *_PPG.hea/.dat, top-level files)",
    )
    f.add_argument("--jobs", type=int, default=2, help="parallel downloads (default 2, as wfdb's own downloader)")
    f.add_argument(
        "--retries",
        type=int,
        default=RETRIES,
        help=f"retries per file after a dropped connection or a server error (default {RETRIES})",
    )
    c = sub.add_parser("check", help="report what the BUT-PPG loader reads and excludes in a folder")
    c.add_argument("root", type=Path, help="the BUT-PPG folder (holds quality-hr-ann.csv)")
    c.add_argument("--task", default="quality", choices=["quality", "motion"])
    c.add_argument("--channels", default="R", help="camera channels, comma-separated (default R, as dataset=butppg)")
    c.add_argument("--window-length", type=int, default=1024, help="samples per window (default 1024)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _cmd_fetch(args: argparse.Namespace) -> None:
    if args.name not in DATASETS:
        raise UserError(f"unknown dataset {args.name!r}: ttm-data fetch knows {', '.join(sorted(DATASETS))}")
    project = DATASETS[args.name]
    base = args.base_url or os.environ.get(BASE_URL_ENV) or default_base_url()
    if not re.match(r"(https?|file)://", base):
        raise UserError(f"--base-url {base!r} is not an http(s):// or file:// URL (PhysioNet: {default_base_url()})")
    print(
        f"{project.slug} {project.version} ({project.title}; {project.licence}: cite it as {project.page} asks)\n"
        f"  from {base.rstrip('/')}/{project.project}/ into {args.dest}",
        flush=True,
    )
    step = {"next": 1}

    def progress(done: int, total: int) -> None:
        if done * 10 >= step["next"] * total and total > 20:
            print(f"  {done}/{total} files", flush=True)
            step["next"] += 1

    s = fetch(project, args.dest, base, ppg_only=args.ppg_only, jobs=args.jobs, retries=args.retries, progress=progress)
    print(
        f"{s.listed} files verified against {CHECKSUMS}: {len(s.downloaded)} downloaded, {len(s.resumed)} resumed, "
        f"{len(s.present)} already present"
    )
    if project is BUTPPG:
        print(f"next: ttm-data check {args.dest}\n      ttm-train dataset=butppg dataset.root={args.dest}")


@contextmanager
def _loader_warnings() -> Iterator[WarningCollector]:
    """The loader's warnings, held back: its per-reason exclusion lines repeat the report printed here."""
    logger = logging.getLogger("ttm_experiments")
    handler, propagate = WarningCollector(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _cmd_check(args: argparse.Namespace) -> None:
    colours = [c.strip().upper() for c in args.channels.split(",") if c.strip()]
    with _loader_warnings() as held:
        report = butppg_report(args.root, args.task, colours, args.window_length)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return
    print(format_report(args.root, report, args.task, colours))
    for record in held.records:
        if " excluded (" not in record.getMessage():  # those are in the table above
            print(f"warning: {record.getMessage()}")


def main(argv: Sequence[str] | None = None) -> int:
    """``ttm-data``: 0 on success, 2 with one line on stderr for a user error (no traceback)."""
    args = _parser().parse_args(argv)
    try:
        {"fetch": _cmd_fetch, "check": _cmd_check}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (verified files are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``ttm-data``: download a public dataset with its published checksums, and check what a loader would read.

    ttm-data fetch butppg data/butppg              # BUT-PPG 2.0.0 from PhysioNet (CC BY 4.0); rerun to resume
    ttm-data fetch butppg data/butppg --ppg-only   # only what the loader reads: the two CSVs and *_PPG records
    ttm-data fetch butppg data/butppg --base-url https://mirror.example/files/   # or TTM_DATA_BASE_URL=...
    ttm-data check data/butppg                     # records, subjects, classes, exclusions, repaired headers

How a fetch works. Files come through ``wfdb``'s downloader (``wfdb.io.download.dl_pn_file``), whose URL is
``<db_index_url>/<slug>/<version>/<path>`` (``db_index_url`` is ``https://physionet.org/files/`` unless
``--base-url`` says otherwise). What wfdb does: it reads a whole file into memory and writes it; a local file
shorter than the remote one is continued with an HTTP Range request, a longer one is fetched again, one of the
same size is left alone. What it does not do, and this module adds: checksums (PhysioNet publishes
``SHA256SUMS.txt`` at the project root, listing every file), a temporary name (wfdb writes the final name
directly), retries of a dropped connection, a mirror for ``wfdb.dl_files`` (it always asks physionet.org for
the project's version) and clear errors.

So: every file is downloaded to ``<dest>/.ttm-data-partial/<path>``, its SHA-256 checked, and only then renamed
to ``<dest>/<path>``; a final name therefore only ever holds a verified file. A rerun hashes what is there and
skips every file that matches (no request at all for a complete copy), continues a partial file, and
re-fetches one whose continuation does not match. A checksum mismatch keeps nothing and names the file, both
hashes and the fix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ttm_experiments.errors import DataError, UserError

log = logging.getLogger(__name__)

BASE_URL_ENV = "TTM_DATA_BASE_URL"
CHECKSUMS = "SHA256SUMS.txt"
STAGING = ".ttm-data-partial"  # below the destination: partial files live here until they are verified
RETRIES = 3  # per file, for a dropped connection or a server error (5xx)
RETRY_WAIT_S = 1.0  # times the attempt number
_HASH = re.compile(r"[0-9a-f]{64}")
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


@dataclass(frozen=True)
class PhysioNetProject:
    """A dataset published on PhysioNet: where it lives and which of its files a loader reads."""

    slug: str
    version: str
    title: str
    licence: str
    required: tuple[str, ...]  # files that make a folder this dataset (`check` names the missing one)
    loader_files: str  # regex (fullmatch on the relative path) of the record files the loader reads

    @property
    def project(self) -> str:
        return f"{self.slug}/{self.version}"

    @property
    def page(self) -> str:
        return f"https://physionet.org/content/{self.project}/"


BUTPPG = PhysioNetProject(
    slug="butppg", version="2.0.0", title="BUT PPG: smartphone PPG with expert quality labels",
    licence="CC BY 4.0", required=("quality-hr-ann.csv", "subject-info.csv"),
    loader_files=r"\d{6}/\d{6}_PPG\.(hea|dat)",
)
DATASETS: dict[str, PhysioNetProject] = {"butppg": BUTPPG}


class ChecksumError(DataError):
    """A downloaded file whose SHA-256 is not the published one."""


class TransferError(DataError):
    """A server that cannot be reached or does not have a file."""


@dataclass
class FetchSummary:
    listed: int
    present: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, str]] = field(default_factory=list)  # (path, expected, found)


# --------------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_checksums(text: str, source: str) -> dict[str, str]:
    """Relative path -> sha256 of a ``sha256sum`` listing (``<hash>  <path>`` or ``<hash> *<path>``).

    Paths that leave the destination (absolute, ``..``) or hold odd characters are refused: the list comes from
    a server and names the files written here.
    """
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        digest, path = (parts[0].lower(), parts[1].lstrip("*")) if len(parts) == 2 else (parts[0], "")
        if not _HASH.fullmatch(digest) or not _SAFE_PATH.fullmatch(path) or ".." in path.split("/"):
            raise DataError(f"{source} line {number} is not '<sha256>  <relative path>': {line[:120]!r}. "
                            "Is the base URL a PhysioNet mirror? Fix: --base-url <the directory that holds "
                            f"<slug>/<version>/> (PhysioNet: {_default_base()})")
        out[path] = digest
    if not out:
        raise DataError(f"{source} lists no file. Is the base URL a PhysioNet mirror?")
    return out


# --------------------------------------------------------------------------------------------------------
# Downloading through wfdb
# --------------------------------------------------------------------------------------------------------


def _default_base() -> str:
    from wfdb.io.download import PN_INDEX_URL

    return PN_INDEX_URL


@contextmanager
def _index_url(base_url: str) -> Iterator[None]:
    """Point wfdb's downloader at ``base_url`` (its setting is global: restored afterwards)."""
    from wfdb.io import download

    old = download.config.db_index_url
    download.set_db_index_url(base_url if base_url.endswith("/") else base_url + "/")
    try:
        yield
    finally:
        download.set_db_index_url(old)


def _url(project: PhysioNetProject, rel: str) -> str:
    from wfdb.io import download

    return f"{download.config.db_index_url.rstrip('/')}/{project.project}/{rel}"


def _wfdb_get(project: PhysioNetProject, rel: str, staging: Path, overwrite: bool) -> None:
    """One file into ``staging/rel`` with ``dl_pn_file`` (continues a shorter file there with a Range request)."""
    from wfdb.io.download import dl_pn_file

    subdir, name = rel.rpartition("/")[::2]
    (staging / subdir).mkdir(parents=True, exist_ok=True)
    dl_pn_file((name, subdir, project.project, str(staging), True, overwrite))


def _transient(err: Exception) -> bool:
    """A dropped connection, a timeout or a server error: worth another try."""
    import requests

    status = getattr(err, "status_code", None)
    return isinstance(err, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)) \
        or (status is not None and status >= 500)


def _reason(err: Exception) -> str:
    """A one-line reason out of requests' nested messages."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    return f"{type(err).__name__}: {text}"[:200]


def _download(project: PhysioNetProject, rel: str, staging: Path, overwrite: bool, retries: int,
              stop: threading.Event | None = None) -> None:
    """``_wfdb_get`` with retries of transient failures; a TransferError once they are spent or not transient."""
    from wfdb.io._url import NetFileNotFoundError

    for attempt in range(retries + 1):
        if stop is not None and stop.is_set():
            raise TransferError("stopped")
        try:
            _wfdb_get(project, rel, staging, overwrite)
            return
        except NetFileNotFoundError as err:
            raise TransferError(
                f"{_url(project, rel)} does not exist (404): the server lacks {rel}. Fix: --base-url must be the "
                f"directory that holds {project.project}/ (PhysioNet: {_default_base()})") from err
        except OSError as err:  # requests' exceptions and wfdb's NetFileError are OSErrors
            if not _transient(err) or attempt == retries:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise TransferError(
                    f"cannot download {_url(project, rel)}{tries}: {_reason(err)}. Fix: check the network and rerun "
                    f"(files already verified are kept, partial ones continued), or point --base-url / "
                    f"{BASE_URL_ENV} at a reachable mirror (PhysioNet: {_default_base()})") from err
            log.info("%s: %s; retrying", rel, _reason(err))
            time.sleep(RETRY_WAIT_S * (attempt + 1))


def _checksums(project: PhysioNetProject, dest: Path, staging: Path, retries: int) -> dict[str, str]:
    """The published checksum list: the local copy when it parses (a versioned project never changes), or
    downloaded (parsed before it is stored, so a mirror's error page is never kept)."""
    local = dest / CHECKSUMS
    if local.is_file():
        try:
            return parse_checksums(local.read_text(encoding="utf-8"), str(local))
        except (DataError, UnicodeDecodeError):
            log.warning("%s is not a checksum list; downloading it again", local)
    _download(project, CHECKSUMS, staging, overwrite=True, retries=retries)
    part = staging / CHECKSUMS
    try:
        sums = parse_checksums(part.read_text(encoding="utf-8", errors="replace"), _url(project, CHECKSUMS))
    except DataError:
        part.unlink(missing_ok=True)
        raise
    dest.mkdir(parents=True, exist_ok=True)
    os.replace(part, local)
    return sums


def _fetch_file(project: PhysioNetProject, rel: str, expected: str, dest: Path, staging: Path, retries: int,
                stop: threading.Event) -> tuple[str, str | None]:
    """One file: ``("present" | "downloaded" | "resumed" | "mismatch", found hash when it mismatched)``."""
    final, part = dest / rel, staging / rel
    if final.is_file():
        if sha256(final) == expected:
            return "present", None
        # a copy under the final name that does not match (another tool's partial file, an older copy): continue
        # it as a partial file; if the continuation does not match either, it is fetched again below
        part.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, part)
    resumed = part.is_file()
    _download(project, rel, staging, overwrite=False, retries=retries, stop=stop)
    found = sha256(part)
    if found != expected and resumed:
        log.info("%s: the continued file does not match its checksum; downloading it whole", rel)
        part.unlink()
        resumed = False
        _download(project, rel, staging, overwrite=True, retries=retries, stop=stop)
        found = sha256(part)
    if found != expected:
        part.unlink()  # nothing half-right is kept: the rerun downloads it again
        return "mismatch", found
    final.parent.mkdir(parents=True, exist_ok=True)
    # no fsync: every later run hashes the file again, so a copy cut short by a crash is simply fetched again
    os.replace(part, final)
    return ("resumed" if resumed else "downloaded"), None


@contextmanager
def _lock(staging: Path) -> Iterator[None]:
    """One fetch per destination at a time: two would append to the same partial files."""
    staging.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one fetch at a time is then the user's job
        yield
        return
    with open(staging / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise UserError(f"another `ttm-data fetch` is writing {staging.parent} (lock {staging / '.lock'}): "
                            "wait for it to finish, or fetch into another directory") from err
        yield


def fetch(project: PhysioNetProject, dest: Path, base_url: str, *, ppg_only: bool = False, jobs: int = 2,
          retries: int = RETRIES, progress=None) -> FetchSummary:
    """Download ``project`` into ``dest``, verified against its SHA256SUMS.txt; see the module doc.

    Raises TransferError when the server cannot be reached (what is verified stays), ChecksumError when any file
    did not match (the others are kept; none with a wrong hash has its final name).
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest} is a file: give a directory to download {project.slug} into")
    staging = dest / STAGING
    created = not dest.exists()
    try:
        summary = _fetch_into(project, dest, staging, base_url, ppg_only=ppg_only, jobs=jobs, retries=retries,
                              progress=progress)
    finally:
        _remove_staging(staging)
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()  # nothing came: leave no empty folder behind
    if summary.mismatched:
        raise ChecksumError(_mismatch_message(project, dest, base_url, summary))
    return summary


def _fetch_into(project: PhysioNetProject, dest: Path, staging: Path, base_url: str, *, ppg_only: bool, jobs: int,
                retries: int, progress) -> FetchSummary:
    with _index_url(base_url), _lock(staging):
        sums = _checksums(project, dest, staging, retries)
        wanted = {p: h for p, h in sums.items()
                  if not ppg_only or "/" not in p or re.fullmatch(project.loader_files, p)}
        summary = FetchSummary(listed=len(wanted))
        stop = threading.Event()
        # wfdb's session keeps at most 2 connections per host ("to avoid overloading the server"): jobs > 2 wait
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(_fetch_file, project, p, h, dest, staging, retries, stop): p
                       for p, h in sorted(wanted.items())}
            try:
                for done, future in enumerate(as_completed(futures), 1):
                    status, found = future.result()
                    rel = futures[future]
                    if status == "mismatch":
                        summary.mismatched.append((rel, wanted[rel], found))
                    else:
                        getattr(summary, status).append(rel)
                    if progress is not None:
                        progress(done, len(futures))
            except BaseException:
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return summary


def _remove_staging(staging: Path) -> None:
    """Drop the staging folder once it holds no partial file (only the lock and empty folders); partial files
    stay for the next run to continue."""
    if not staging.is_dir():
        return
    leftovers = [p for p in staging.rglob("*") if p.is_file() and p.name != ".lock"]
    if not leftovers:
        shutil.rmtree(staging, ignore_errors=True)


def _mismatch_message(project: PhysioNetProject, dest: Path, base_url: str, summary: FetchSummary) -> str:
    rel, expected, found = summary.mismatched[0]
    more = summary.mismatched[1:]
    others = f" (and {len(more)} more: {', '.join(r for r, _, _ in more[:5])}{', ...' if len(more) > 5 else ''})" \
        if more else ""
    kept = len(summary.present) + len(summary.downloaded) + len(summary.resumed)
    return (f"checksum mismatch for {rel}{others}: {CHECKSUMS} expects sha256 {expected}, the download from "
            f"{base_url.rstrip('/')}/{project.project}/ has {found}; it was not kept. Fix: rerun `ttm-data fetch "
            f"{project.slug} {dest}` to download it again (the {kept} verified files are kept); if it fails "
            f"again the server's copy is damaged: use another --base-url (PhysioNet: {_default_base()})")


# --------------------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------------------


def require_butppg_root(root: Path) -> None:
    """DataError naming the missing file when ``root`` is not a BUT-PPG folder."""
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise DataError(f"{root} {what}: give the BUT-PPG folder (the one that holds {BUTPPG.required[0]}); "
                        f"to download it: ttm-data fetch butppg {root}")
    for name in BUTPPG.required:
        if not (root / name).is_file():
            below = sorted(p.parent for p in root.glob(f"*/{name}"))
            hint = f"; it is in {below[0]}: ttm-data check {below[0]}?" if below else ""
            raise DataError(f"{root} is not a BUT-PPG folder: {name} is missing{hint}. Fix: point at the folder that "
                            f"holds {', '.join(BUTPPG.required)} and the record folders, or download it: "
                            f"ttm-data fetch butppg {root}")


def butppg_report(root: Path, task: str, colours: Sequence[str], window_length: int) -> dict:
    """The BUT-PPG loader's own report on ``root`` (read into a throw-away cache), plus download completeness.

    Missing record folders and NaN windows are counted here (the loader's ``skip`` / ``drop`` modes) rather than
    stopping the check; the report says what ttm-train's defaults would do with them.
    """
    import tempfile

    require_butppg_root(root)  # before the imports below (hydra, scipy, wfdb): a wrong path fails at once

    from ttm_experiments.config.schema import DatasetConf
    from ttm_experiments.data.butppg import load_butppg

    conf = DatasetConf(name="butppg", root=str(root), window_length=window_length, duration_s=10.0,
                       channels=len(colours), nonfinite="drop", task=task, ppg_channels=list(colours),
                       missing_records="skip")
    with tempfile.TemporaryDirectory(prefix="ttm-data-check-") as cache:
        report = dict(load_butppg(conf, cache_dir=Path(cache)).report)
    report["download"] = _download_state(root)
    return report


def _download_state(root: Path) -> dict:
    state: dict = {"partial_fetch_left": (root / STAGING).is_dir()}
    if (root / CHECKSUMS).is_file():
        try:
            listed = parse_checksums((root / CHECKSUMS).read_text(encoding="utf-8"), str(root / CHECKSUMS))
        except (DataError, UnicodeDecodeError):
            return state
        missing = sorted(p for p in listed if not (root / p).is_file())
        state.update(listed=len(listed), missing=len(missing), missing_examples=missing[:5],
                     loader_files_missing=sum(1 for p in missing if re.fullmatch(BUTPPG.loader_files, p)
                                              or p in BUTPPG.required))
    return state


def format_report(root: Path, report: dict, task: str, colours: Sequence[str]) -> str:
    counts = dict(report.get("counts", {}))
    lines = [f"BUT-PPG at {root} (as `ttm-train dataset=butppg dataset.root={root}` reads it: task {task}, "
             f"channels {','.join(colours)})"]

    def row(name: str, value) -> None:
        lines.append(f"  {name + ':':<30}{value}")

    row("records listed", counts.pop("records_listed", "?"))
    row("records used", f"{counts.pop('records_used', '?')} ({counts.pop('windows', '?')} windows)")
    row("subjects", counts.pop("subjects", "?"))
    classes = {k[2:]: v for k, v in list(counts.items()) if k.startswith("n_")}
    total = sum(classes.values()) or 1
    row("classes", ", ".join(f"{name} {n} ({100 * n / total:.1f} %)" for name, n in classes.items()))
    for k in classes:
        counts.pop(f"n_{k}")
    row("release-1 headers", f"{counts.pop('transposed_repaired', 0)} transposed repaired, "
                             f"{counts.pop('interleaved_repaired', 0)} interleaved repaired")
    for key, value in counts.items():
        row(key.replace("_", " "), value)
    sites = report.get("sites", {})
    if sites:
        row("sites", "; ".join(f"{name} {s['windows']} windows, "
                               + (f"{100 * s['good_fraction']:.0f} % good" if s.get("good_fraction") is not None
                                  else "unrated") for name, s in sites.items()))
    excluded = {k: v for k, v in report.get("excluded", {}).items() if v}
    row("excluded", sum(excluded.values()) if excluded else "none")
    for reason, n in excluded.items():
        examples = report.get("examples", {}).get(reason, [])
        lines.append(f"    {n:>6}  {reason}" + (f"  (e.g. {', '.join(map(str, examples[:5]))})" if examples else ""))
    lines += [f"  {note}" for note in report.get("notes", [])]
    lines += _download_lines(root, report.get("download", {}), excluded)
    return "\n".join(lines)


def _download_lines(root: Path, state: dict, excluded: dict) -> list[str]:
    lines = []
    if "listed" in state:
        missing = state["missing"]
        detail = f", {missing} missing (e.g. {', '.join(state['missing_examples'])}); " \
                 f"{state['loader_files_missing']} of them read by the loader" if missing else ", all present"
        lines.append(f"  {'download:':<30}{CHECKSUMS} lists {state['listed']} files{detail}")
    else:
        lines.append(f"  {'download:':<30}no {CHECKSUMS} (not fetched with ttm-data): completeness not checked")
    if state.get("partial_fetch_left") or state.get("loader_files_missing"):
        lines.append(f"note: the download is incomplete: rerun `ttm-data fetch butppg {root}` to finish it")
    if excluded.get("record folder missing"):
        lines.append("note: ttm-train stops on annotated records without a folder unless dataset.missing_records=skip")
    if any(k.startswith("windows with NaN") for k in excluded):
        lines.append("note: ttm-train stops on records with NaN samples unless dataset.nonfinite=drop")
    return lines


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttm-data", description="Download a public dataset with checksums, or check "
                                "what a loader reads from a folder.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download a dataset (verified against its SHA256SUMS.txt; rerun to resume)")
    f.add_argument("name", help=f"dataset: {', '.join(sorted(DATASETS))}")
    f.add_argument("dest", type=Path, help="directory to download into (created)")
    f.add_argument("--base-url", default=None,
                   help=f"the directory above <slug>/<version>/ on a mirror (default ${BASE_URL_ENV}, else "
                        "PhysioNet's https://physionet.org/files/); file:// works for a local mirror")
    f.add_argument("--ppg-only", action="store_true",
                   help="only the files the loader reads (the CSVs, *_PPG.hea/.dat, top-level files)")
    f.add_argument("--jobs", type=int, default=2, help="parallel downloads (default 2, as wfdb's own downloader)")
    f.add_argument("--retries", type=int, default=RETRIES,
                   help=f"retries per file after a dropped connection or a server error (default {RETRIES})")
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
    base = args.base_url or os.environ.get(BASE_URL_ENV) or _default_base()
    if not re.match(r"(https?|file)://", base):
        raise UserError(f"--base-url {base!r} is not an http(s):// or file:// URL (PhysioNet: {_default_base()})")
    print(f"{project.slug} {project.version} ({project.title}; {project.licence}: cite it as {project.page} asks)\n"
          f"  from {base.rstrip('/')}/{project.project}/ into {args.dest}", flush=True)
    step = {"next": 1}

    def progress(done: int, total: int) -> None:
        if done * 10 >= step["next"] * total and total > 20:
            print(f"  {done}/{total} files", flush=True)
            step["next"] += 1

    s = fetch(project, args.dest, base, ppg_only=args.ppg_only, jobs=args.jobs, retries=args.retries,
              progress=progress)
    print(f"{s.listed} files verified against {CHECKSUMS}: {len(s.downloaded)} downloaded, {len(s.resumed)} resumed, "
          f"{len(s.present)} already present")
    if project is BUTPPG:
        print(f"next: ttm-data check {args.dest}\n      ttm-train dataset=butppg dataset.root={args.dest}")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _loader_warnings() -> Iterator[_Collect]:
    """The loader's warnings, held back: its per-reason exclusion lines repeat the report printed here."""
    logger = logging.getLogger("ttm_experiments")
    handler, propagate = _Collect(), logger.propagate
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

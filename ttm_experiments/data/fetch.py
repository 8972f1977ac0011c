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

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ttm_experiments.errors import DataError, UserError
from ttm_experiments.utils.locks import holder, lock_path, try_lock

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
    slug="butppg",
    version="2.0.0",
    title="BUT PPG: smartphone PPG with expert quality labels",
    licence="CC BY 4.0",
    required=("quality-hr-ann.csv", "subject-info.csv"),
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
            raise DataError(
                f"{source} line {number} is not '<sha256>  <relative path>': {line[:120]!r}. "
                "Is the base URL a PhysioNet mirror? Fix: --base-url <the directory that holds "
                f"<slug>/<version>/> (PhysioNet: {default_base_url()})"
            )
        out[path] = digest
    if not out:
        raise DataError(f"{source} lists no file. Is the base URL a PhysioNet mirror?")
    return out


# --------------------------------------------------------------------------------------------------------
# Downloading through wfdb
# --------------------------------------------------------------------------------------------------------


def default_base_url() -> str:
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
    return isinstance(err, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)) or (
        status is not None and status >= 500
    )


def _reason(err: Exception) -> str:
    """A one-line reason out of requests' nested messages."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    return f"{type(err).__name__}: {text}"[:200]


def _download(
    project: PhysioNetProject,
    rel: str,
    staging: Path,
    overwrite: bool,
    retries: int,
    stop: threading.Event | None = None,
) -> None:
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
                f"directory that holds {project.project}/ (PhysioNet: {default_base_url()})"
            ) from err
        except OSError as err:  # requests' exceptions and wfdb's NetFileError are OSErrors
            if not _transient(err) or attempt == retries:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise TransferError(
                    f"cannot download {_url(project, rel)}{tries}: {_reason(err)}. Fix: check the network and rerun "
                    f"(files already verified are kept, partial ones continued), or point --base-url / "
                    f"{BASE_URL_ENV} at a reachable mirror (PhysioNet: {default_base_url()})"
                ) from err
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


def _fetch_file(
    project: PhysioNetProject, rel: str, expected: str, dest: Path, staging: Path, retries: int, stop: threading.Event
) -> tuple[str, str | None]:
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


_LOCK_TARGET = "fetch"  # the lock file is <staging>/fetch.lock


@contextmanager
def _lock(staging: Path) -> Iterator[None]:
    """One fetch per destination at a time: two would append to the same partial files."""
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / _LOCK_TARGET
    fd = try_lock(target, what=f"ttm-data fetch into {staging.parent}", fix="fetch onto a local disk")
    if fd is None:
        raise UserError(
            f"another `ttm-data fetch` (process {holder(target)}) is writing {staging.parent} (lock "
            f"{lock_path(target)}): wait for it to finish, or fetch into another directory"
        )
    try:
        yield
    finally:
        os.close(fd)


def fetch(
    project: PhysioNetProject,
    dest: Path,
    base_url: str,
    *,
    ppg_only: bool = False,
    jobs: int = 2,
    retries: int = RETRIES,
    progress=None,
) -> FetchSummary:
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
        summary = _fetch_into(
            project, dest, staging, base_url, ppg_only=ppg_only, jobs=jobs, retries=retries, progress=progress
        )
    finally:
        _remove_staging(staging)
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()  # nothing came: leave no empty folder behind
    if summary.mismatched:
        raise ChecksumError(_mismatch_message(project, dest, base_url, summary))
    return summary


def _fetch_into(
    project: PhysioNetProject,
    dest: Path,
    staging: Path,
    base_url: str,
    *,
    ppg_only: bool,
    jobs: int,
    retries: int,
    progress,
) -> FetchSummary:
    with _index_url(base_url), _lock(staging):
        sums = _checksums(project, dest, staging, retries)
        wanted = {
            p: h for p, h in sums.items() if not ppg_only or "/" not in p or re.fullmatch(project.loader_files, p)
        }
        summary = FetchSummary(listed=len(wanted))
        stop = threading.Event()
        # wfdb's session keeps at most 2 connections per host ("to avoid overloading the server"): jobs > 2 wait
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {
                pool.submit(_fetch_file, project, p, h, dest, staging, retries, stop): p
                for p, h in sorted(wanted.items())
            }
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
    lock = lock_path(staging / _LOCK_TARGET)
    leftovers = [p for p in staging.rglob("*") if p.is_file() and p != lock]
    if not leftovers:
        shutil.rmtree(staging, ignore_errors=True)


def _mismatch_message(project: PhysioNetProject, dest: Path, base_url: str, summary: FetchSummary) -> str:
    rel, expected, found = summary.mismatched[0]
    more = summary.mismatched[1:]
    others = (
        f" (and {len(more)} more: {', '.join(r for r, _, _ in more[:5])}{', ...' if len(more) > 5 else ''})"
        if more
        else ""
    )
    kept = len(summary.present) + len(summary.downloaded) + len(summary.resumed)
    return (
        f"checksum mismatch for {rel}{others}: {CHECKSUMS} expects sha256 {expected}, the download from "
        f"{base_url.rstrip('/')}/{project.project}/ has {found}; it was not kept. Fix: rerun `ttm-data fetch "
        f"{project.slug} {dest}` to download it again (the {kept} verified files are kept); if it fails "
        f"again the server's copy is damaged: use another --base-url (PhysioNet: {default_base_url()})"
    )


# --------------------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------

"""`ttm-data fetch` / `check` against a local HTTP server holding a small BUT-PPG in PhysioNet's layout.

The server (http.server on 127.0.0.1, a free port) serves ``/butppg/2.0.0/<path>`` with HEAD and Range support
(as physionet.org does), counts requests, and can drop a connection mid-file or serve a damaged file.
No network: the downloader's base URL points at the server.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.data_fixtures import write_butppg
from ttm_experiments.cli.data import main
from ttm_experiments.data import fetch as fetch_mod
from ttm_experiments.data.fetch import CHECKSUMS, STAGING

PROJECT = "/butppg/2.0.0/"


class Mirror:
    """Files by relative path; requests seen as (method, path, Range header)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_once: set[str] = set()  # send half of the body, then close the connection (first GET only)
        self.lock = threading.Lock()

    def gets(self, rel: str | None = None) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and (rel is None or r[1] == rel)]


def _handler(mirror: Mirror):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            rel = self.path[len(PROJECT) :] if self.path.startswith(PROJECT) else None
            rng = self.headers.get("Range")
            with mirror.lock:
                mirror.requests.append((self.command, rel or self.path, rng))
                data = mirror.files.get(rel) if rel else None
                drop = body and rel in mirror.drop_once
                mirror.drop_once.discard(rel)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m.group(1)) if (m := re.fullmatch(r"bytes=(\d+)-", rng or "")) else 0
            chunk = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(chunk)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if drop:
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, bytes]:
    """A small BUT-PPG 2.0.0 as PhysioNet publishes it: CSVs, record folders, RECORDS, LICENSE, SHA256SUMS."""
    root = tmp_path_factory.mktemp("butppg-src")
    write_butppg(root, n_subjects=3, records_per_subject=3, transposed=("100002",), unlabeled=("101003",))
    (root / "RECORDS").write_text("".join(f"{p.parent.name}/{p.stem}\n" for p in sorted(root.glob("*/*.hea"))))
    (root / "LICENSE.txt").write_text("Creative Commons Attribution 4.0 International Public License\n")
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    files[CHECKSUMS] = "".join(f"{hashlib.sha256(b).hexdigest()}  {rel}\n" for rel, b in files.items()).encode()
    return files


@pytest.fixture
def mirror(published):
    m = Mirror(published)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(m))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    m.url = f"http://127.0.0.1:{server.server_port}/"
    yield m
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    monkeypatch.setattr(fetch_mod, "RETRY_WAIT_S", 0.0)


def run_fetch(mirror: Mirror, dest: Path, *extra: str) -> int:
    return main(["fetch", "butppg", str(dest), "--base-url", mirror.url, *extra])


def assert_complete(dest: Path, published: dict[str, bytes]) -> None:
    for rel, data in published.items():
        assert (dest / rel).read_bytes() == data, rel
    assert not (dest / STAGING).exists()


def test_fetch_then_check(mirror, published, tmp_path, capsys):
    dest = tmp_path / "butppg"
    assert run_fetch(mirror, dest) == 0
    assert_complete(dest, published)
    assert "verified against SHA256SUMS.txt" in capsys.readouterr().out

    assert main(["check", str(dest)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"records listed:\s+9\n", out)
    assert re.search(r"records used:\s+8 \(8 windows\)", out)
    assert re.search(r"subjects:\s+3\n", out)
    assert "1 transposed repaired" in out
    assert re.search(r"1\s+no quality label\s+\(e\.g\. 101003\)", out)
    assert f"lists {len(published) - 1} files, all present" in out
    assert "poor" in out and "good" in out


def test_second_fetch_downloads_nothing(mirror, published, tmp_path, capsys):
    dest = tmp_path / "butppg"
    assert run_fetch(mirror, dest) == 0
    mirror.requests.clear()
    assert run_fetch(mirror, dest) == 0
    assert mirror.requests == []
    assert f"0 downloaded, 0 resumed, {len(published) - 1} already present" in capsys.readouterr().out


def test_dropped_connection_is_retried(mirror, published, tmp_path):
    dest = tmp_path / "butppg"
    rel = "100001/100001_PPG.dat"
    mirror.drop_once.add(rel)
    assert run_fetch(mirror, dest) == 0
    assert len(mirror.gets(rel)) == 2  # the dropped transfer, then the whole file again
    assert_complete(dest, published)


def test_interrupted_download_resumes(mirror, published, tmp_path):
    """A partial file left by a kill (in the staging folder) and one under the final name (another tool) are
    continued with a Range request; a damaged partial file is fetched again whole."""
    dest = tmp_path / "butppg"
    assert run_fetch(mirror, dest) == 0
    killed, other_tool, damaged = "100001/100001_PPG.dat", "102001/102001_PPG.dat", "101001/101001_PPG.dat"
    for rel in (killed, damaged):
        (dest / rel).unlink()
    (dest / STAGING / "100001").mkdir(parents=True)
    (dest / STAGING / killed).write_bytes(published[killed][:100])
    (dest / other_tool).write_bytes(published[other_tool][:50])
    (dest / STAGING / "101001").mkdir(parents=True)
    (dest / STAGING / damaged).write_bytes(b"x" * 100)
    mirror.requests.clear()

    assert run_fetch(mirror, dest) == 0
    assert mirror.gets(killed) == [("GET", killed, "bytes=100-")]
    assert mirror.gets(other_tool) == [("GET", other_tool, "bytes=50-")]
    assert [r[2] for r in mirror.gets(damaged)] == ["bytes=100-", None]
    assert len(mirror.gets()) == 4
    assert_complete(dest, published)


def test_checksum_mismatch_keeps_nothing(mirror, published, tmp_path, capsys):
    dest = tmp_path / "butppg"
    rel = "101002/101002_PPG.dat"
    mirror.files[rel] = b"\0" + published[rel][1:]
    assert run_fetch(mirror, dest) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"checksum mismatch for {rel}" in err
    assert hashlib.sha256(published[rel]).hexdigest() in err
    assert hashlib.sha256(mirror.files[rel]).hexdigest() in err
    assert "rerun `ttm-data fetch butppg" in err
    assert not (dest / rel).exists()
    assert not (dest / STAGING).exists()  # nothing half-written left behind
    assert (dest / "100001/100001_PPG.dat").read_bytes() == published["100001/100001_PPG.dat"]

    mirror.files[rel] = published[rel]  # the server is repaired: the rerun fetches only that file
    mirror.requests.clear()
    assert run_fetch(mirror, dest) == 0
    assert [r[1] for r in mirror.requests] == [rel]
    assert_complete(dest, published)


def test_unreachable_base_url(tmp_path, capsys):
    dest = tmp_path / "butppg"
    with socket.socket() as s:  # bound for the whole fetch, never listening: the port is refused and stays ours
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert main(["fetch", "butppg", str(dest), "--base-url", f"http://127.0.0.1:{port}/", "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and f"127.0.0.1:{port}/butppg/2.0.0/SHA256SUMS.txt" in err
    assert "--base-url" in err and len(err.strip().splitlines()) == 1
    assert not dest.exists()  # nothing left behind, not even an empty folder


def test_base_url_that_is_not_a_mirror(mirror, tmp_path, capsys):
    assert main(["fetch", "butppg", str(tmp_path / "d"), "--base-url", mirror.url + "wrong/"]) == 2
    err = capsys.readouterr().err
    assert "404" in err and "--base-url must be the directory that holds butppg/2.0.0/" in err


def test_unsafe_checksum_list_is_refused(mirror, tmp_path, capsys):
    mirror.files[CHECKSUMS] = f"{'0' * 64}  ../outside.txt\n".encode()
    assert run_fetch(mirror, tmp_path / "d") == 2
    assert "is not '<sha256>  <relative path>'" in capsys.readouterr().err
    assert not (tmp_path / "outside.txt").exists()


def test_ppg_only(mirror, published, tmp_path):
    dest = tmp_path / "butppg"
    rel = "100001/100001_ECG.dat"
    mirror.files[rel] = b"ecg"
    mirror.files[CHECKSUMS] += f"{hashlib.sha256(b'ecg').hexdigest()}  {rel}\n".encode()
    assert run_fetch(mirror, dest, "--ppg-only") == 0
    assert not (dest / rel).exists()
    assert (dest / "quality-hr-ann.csv").is_file() and (dest / "100001/100001_PPG.hea").is_file()


def test_unknown_dataset(tmp_path, capsys):
    assert main(["fetch", "mimic", str(tmp_path)]) == 2
    assert "unknown dataset 'mimic': ttm-data fetch knows butppg" in capsys.readouterr().err


def test_check_names_the_missing_file(tmp_path):
    (tmp_path / "quality-hr-ann.csv").write_text("ID,Quality,HR\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ttm_experiments.cli.data", "check", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "is not a BUT-PPG folder: subject-info.csv is missing" in proc.stderr
    assert "Traceback" not in proc.stderr

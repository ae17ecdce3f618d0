import hashlib
import http.server
import io
import sys
import threading
import zipfile

import numpy as np
import pytest
import tifffile
from helpers import run

from eurosat.files import list_files

NESTED = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"


def make_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("Forest", "River"):
            for n in (1, 2):
                image = io.BytesIO()
                tifffile.imwrite(image, np.full((64, 64, 13), n, np.uint16), photometric="minisblack", planarconfig="contig")
                archive.writestr(f"{NESTED}/{name}/{name}_{n}.tif", image.getvalue())
    return buffer.getvalue()


# Split lists in the published format: <Class>_<n>.jpg for files that are .tif on disk
LISTS = {"train": b"Forest_1.jpg\nRiver_1.jpg\n", "val": b"Forest_2.jpg\n", "test": b"River_2.jpg\n"}


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves the archive at any path but the lists' (/lists/eurosat-<part>.txt), honouring Range requests like the
    real mirror."""

    payload = b""
    ranges: list = []

    def do_GET(self):
        start = 0
        if header := self.headers.get("Range"):
            Mirror.ranges.append(header)
            start = int(header.split("=")[1].rstrip("-"))
        listed = {f"/lists/eurosat-{part}.txt": content for part, content in LISTS.items()}
        if self.path.startswith("/lists/") and self.path not in listed:
            self.send_error(404)
            return
        body = listed.get(self.path, self.payload)[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    Mirror.payload, Mirror.ranges = make_archive(), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/EuroSATallBands.zip", hashlib.md5(Mirror.payload).hexdigest()
    server.shutdown()


def download(tmp_path, url, md5, check=True, lists_md5=None):
    """eurosat.download from the test mirror; the lists come from its /lists/ with their own MD5s."""
    base = url.rsplit("/", 1)[0]
    md5s = lists_md5 or [hashlib.md5(LISTS[part]).hexdigest() for part in ("train", "val", "test")]
    return run(
        sys.executable,
        "-m",
        "eurosat.download",
        "--url",
        url,
        "--md5",
        md5,
        "--out",
        tmp_path / "eurosat",
        "--downloads",
        tmp_path / "downloads",
        "--lists-url",
        f"{base}/lists",
        "--lists-md5",
        *md5s,
        check=check,
    )


def test_download_checks_md5_and_unpacks(tmp_path, mirror):
    url, md5 = mirror
    download(tmp_path, url, md5)
    listing = list_files(tmp_path / "eurosat")
    assert listing.classes == ("Forest", "River") and len(listing.files) == 4
    assert hashlib.md5((tmp_path / "downloads" / "EuroSATallBands.zip").read_bytes()).hexdigest() == md5
    for part, content in LISTS.items():  # beside the images, where --split torchgeo reads them
        assert (tmp_path / "eurosat" / f"eurosat-{part}.txt").read_bytes() == content


def test_a_list_with_another_md5_is_one_line_and_removed(tmp_path, mirror):
    url, md5 = mirror
    result = download(tmp_path, url, md5, check=False, lists_md5=["0" * 32] * 3)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: eurosat-train.txt has MD5")
    assert not (tmp_path / "eurosat" / "eurosat-train.txt").exists()


def test_download_resumes_a_partial_file(tmp_path, mirror):
    url, md5 = mirror
    (tmp_path / "downloads").mkdir()
    half = len(Mirror.payload) // 2
    (tmp_path / "downloads" / "EuroSATallBands.zip.part").write_bytes(Mirror.payload[:half])
    download(tmp_path, url, md5)
    assert Mirror.ranges == [f"bytes={half}-"]
    assert (tmp_path / "downloads" / "EuroSATallBands.zip").read_bytes() == Mirror.payload


def test_wrong_md5_is_one_line_and_removes_the_archive(tmp_path, mirror):
    url, _ = mirror
    result = download(tmp_path, url, "0" * 32, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: EuroSATallBands.zip has MD5")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "downloads" / "EuroSATallBands.zip").exists()


def test_offline_is_one_clear_line(tmp_path):
    result = download(tmp_path, "http://127.0.0.1:9/EuroSATallBands.zip", "0" * 32, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cannot download" in result.stderr and "copy EuroSATallBands.zip into" in result.stderr

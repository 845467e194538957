"""core.dataset.download end to end against a loopback Dataverse look-alike (nothing leaves 127.0.0.1)."""

import csv
import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
from conftest import write_tiny_dataset

from core.dataset import commands, data, download
def _zip(files: dict, folder: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, payload in files.items():
            zf.writestr(f"{folder}{name}", payload)
    return buffer.getvalue()


def _publisher_files(source: Path) -> dict:
    """The four publisher files (name -> bytes) made from a tiny dataset; ``.tab`` maps to (original, tab)."""
    images = sorted((source / "images").iterdir())
    metadata = pd.read_csv(source / "HAM10000_metadata.csv")
    return {
        "HAM10000_images_part_1.zip": _zip({p.name: p.read_bytes() for p in images[::2]}),
        # the second archive nests its files in a folder, as some zips do
        "HAM10000_images_part_2.zip": _zip({p.name: p.read_bytes() for p in images[1::2]}, "part2/"),
        "HAM10000_segmentations_lesion_tschandl.zip": _zip(
            {p.name: p.read_bytes() for p in (source / "masks").iterdir()}, "HAM10000_segmentations_lesion_tschandl/"
        ),
        "HAM10000_metadata.tab": (
            metadata.to_csv(index=False).encode(),
            metadata.to_csv(index=False, sep="\t", quoting=csv.QUOTE_NONNUMERIC).encode(),
        ),
    }


def _listing(files: dict, corrupt: str = "") -> tuple[dict, dict]:
    """The dataset JSON and the id -> (original bytes, default bytes) table the server serves."""
    entries, served = [], {}
    for k, (name, payload) in enumerate(sorted(files.items()), start=100):
        original, default = payload if isinstance(payload, tuple) else (payload, payload)
        record = {"id": k, "filename": name, "filesize": len(default)}
        md5 = hashlib.md5(original).hexdigest()
        if isinstance(payload, tuple):
            record.update(originalFileFormat="text/csv", originalFileSize=len(original), md5=md5)
        else:
            record["checksum"] = {"type": "MD5", "value": md5}
        if name == corrupt:
            original = default = original[:-1] + bytes([original[-1] ^ 0xFF])
        entries.append({"label": name, "dataFile": record})
        served[k] = (original, default)
    return {"status": "OK", "data": {"latestVersion": {"files": entries}}}, served


@pytest.fixture
def dataverse(tmp_path):
    """Start a loopback server; ``serve(corrupt=..., honour_original=...)`` returns its base URL."""
    state = {"requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server naming)
            url = urlparse(self.path)
            query = parse_qs(url.query)
            state["requests"].append(self.path)
            if url.path == "/api/datasets/:persistentId/" and query.get("persistentId") == [download.DOI]:
                return self._send(json.dumps(state["listing"]).encode(), "application/json")
            if url.path.startswith("/api/access/datafile/"):
                original, default = state["served"][int(url.path.rsplit("/", 1)[1])]
                wants_original = query.get("format") == ["original"] and state["honour_original"]
                return self._send(original if wants_original else default, "application/octet-stream")
            self.send_error(404)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    files = _publisher_files(write_tiny_dataset(tmp_path / "source", lesions_per_class=2))

    def serve(corrupt: str = "", honour_original: bool = True) -> str:
        state["listing"], state["served"] = _listing(files, corrupt)
        state["honour_original"] = honour_original
        return f"http://127.0.0.1:{server.server_address[1]}"

    serve.requests = state["requests"]
    yield serve
    server.shutdown()
    server.server_close()


def test_download_end_to_end(dataverse, tmp_path):
    base = dataverse()
    calls = []
    dest = download.download_ham10000(dest=tmp_path / "ham", base_url=base, progress=lambda *a: calls.append(a))
    frame = data.load_dataset(dest)
    assert len(frame) == 21 and (frame["mask_path"] != "").all()
    assert (dest / "HAM10000_metadata.csv").is_file()
    assert {Path(p).parent.name for p in frame["path"]} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ham", "source"]  # no partial folder left
    done, total, _ = calls[-1]
    assert done == total > 0 and all(b[0] <= b[1] for b in calls)
    assert any(name == "HAM10000_images_part_1.zip" for _, _, name in calls)
    assert any("format=original" in r for r in dataverse.requests)


def test_tab_served_instead_of_original_is_accepted(dataverse, tmp_path):
    dest = download.download_ham10000(dest=tmp_path / "ham", base_url=dataverse(honour_original=False))
    assert (dest / "HAM10000_metadata.tab").is_file()
    assert len(data.load_dataset(dest)) == 21


@pytest.mark.parametrize("corrupt", ["HAM10000_images_part_2.zip", "HAM10000_metadata.tab"])
def test_checksum_mismatch_leaves_nothing(dataverse, tmp_path, corrupt):
    with pytest.raises(download.DownloadError, match=f"{corrupt}: MD5 mismatch"):
        download.download_ham10000(dest=tmp_path / "ham", base_url=dataverse(corrupt=corrupt))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_existing_target_is_refused_before_any_request(dataverse, tmp_path):
    base = dataverse()
    dest = tmp_path / "ham"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(download.DownloadError, match="already exists and is not empty"):
        download.download_ham10000(dest=dest, base_url=base)
    assert dataverse.requests == [] and (dest / "keep.txt").read_text() == "mine"


def test_empty_target_folder_is_filled(dataverse, tmp_path):
    (tmp_path / "ham").mkdir()
    dest = download.download_ham10000(dest=tmp_path / "ham", base_url=dataverse())
    assert len(data.load_dataset(dest)) == 21


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(download.DownloadError, match="cannot read the dataset listing"):
        download.download_ham10000(dest=tmp_path / "ham", base_url="http://127.0.0.1:9")
    assert not (tmp_path / "ham").exists()


def test_cli_download(dataverse, tmp_path, capsys):
    assert commands.main(["download", "--dest", str(tmp_path / "ham"), "--base-url", dataverse()]) == 0
    captured = capsys.readouterr()
    assert "dataset ready in" in captured.out and "100.0%" in captured.err
    assert commands.main(["download", "--dest", str(tmp_path / "ham"), "--base-url", dataverse()]) == 1
    assert "already exists" in capsys.readouterr().err

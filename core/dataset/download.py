"""Fetch HAM10000 from its publisher, Harvard Dataverse (doi:10.7910/DVN/DBW86T).

Uses the public Dataverse API (stdlib ``urllib`` only): the dataset listing
``GET {base}/api/datasets/:persistentId/?persistentId=<doi>`` names the files,
``GET {base}/api/access/datafile/{id}`` streams one. Every file is checked for
size and MD5, the zips are extracted into a temporary sibling of the target
folder, the result is loaded once as a check, and only then is the folder moved
into place with ``os.replace``: a half-written dataset never looks complete.

The metadata is an ingested tabular file: Dataverse serves a tab-separated
``.tab`` by default and the uploaded original with ``?format=original``. Its
listed MD5 and ``originalFileSize`` describe the original, so the original is
asked for; a server that still answers with the ``.tab`` is accepted on size
alone (the loader then checks the content).
"""

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from core.dataset import data
from core.contracts.paths import dataset_dir

DEFAULT_BASE_URL = "https://dataverse.harvard.edu"
DOI = "doi:10.7910/DVN/DBW86T"
ARCHIVES = ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip", "HAM10000_segmentations_lesion_tschandl.zip")
METADATA = "HAM10000_metadata.tab"
CHUNK = 1 << 20
TIMEOUT = 60
USER_AGENT = "ham10000-lesion-lab/1.0 (python urllib)"

Progress = Callable[[int, int, str], None]


class DownloadError(RuntimeError):
    """A download that could not complete; nothing is left at the target."""


def list_files(base_url: str = DEFAULT_BASE_URL, doi: str = DOI) -> dict:
    """Map file name -> ``dataFile`` record of the dataset's latest version.

    Raises:
        DownloadError: the listing cannot be fetched or has no files.
    """
    query = urllib.parse.urlencode({"persistentId": doi})
    url = f"{base_url.rstrip('/')}/api/datasets/:persistentId/?{query}"
    try:
        with urllib.request.urlopen(_request(url), timeout=TIMEOUT) as response:
            listing = json.load(response)
        files = listing["data"]["latestVersion"]["files"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as err:
        raise DownloadError(f"{url}: cannot read the dataset listing ({err})") from err
    return {f["dataFile"]["filename"]: f["dataFile"] for f in files if "dataFile" in f}


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": USER_AGENT})


def expected_md5(record: dict) -> str | None:
    """The MD5 a ``dataFile`` record promises, from ``md5`` or ``checksum``."""
    checksum = record.get("checksum") or {}
    if str(checksum.get("type", "")).upper() == "MD5":
        return str(checksum.get("value", "")).lower() or None
    return (record.get("md5") or "").lower() or None


def download_file(base_url: str, record: dict, target: Path, *, progress: Progress, done: int, total: int) -> int:
    """Stream one data file to ``target``, verifying size and MD5.

    Args:
        base_url: the Dataverse server.
        record: the file's ``dataFile`` record from :func:`list_files`.
        target: where to write it.
        progress: called with (bytes done overall, bytes overall, file name).
        done: bytes of earlier files, for the overall progress.
        total: bytes of all files.

    Returns:
        The number of bytes written.

    Raises:
        DownloadError: network failure, wrong size or checksum.
    """
    tabular = "originalFileSize" in record or "originalFileFormat" in record
    url = f"{base_url.rstrip('/')}/api/access/datafile/{record['id']}"
    url += "?format=original" if tabular else ""
    name = record["filename"]
    digest, size = hashlib.md5(), 0
    try:
        with urllib.request.urlopen(_request(url), timeout=TIMEOUT) as response, open(target, "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                progress(done + size, total, name)
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: download of {name} failed ({err})") from err
    _verify(record, name, size, digest.hexdigest(), tabular)
    return size


def _verify(record: dict, name: str, size: int, md5: str, tabular: bool) -> None:
    """Raise unless size and MD5 match the record (see module docstring for ``.tab``)."""
    if tabular and size == record.get("filesize") and size != record.get("originalFileSize"):
        return  # the archival .tab: its MD5 is not listed anywhere
    want_size = record.get("originalFileSize") if tabular else record.get("filesize")
    if want_size is not None and size != int(want_size):
        raise DownloadError(f"{name}: size mismatch, got {size} bytes, expected {want_size}")
    want_md5 = expected_md5(record)
    if want_md5 and md5 != want_md5:
        raise DownloadError(f"{name}: MD5 mismatch, got {md5}, expected {want_md5}")


def extract(archive: Path, folder: Path) -> int:
    """Extract a zip's files, flattened, into ``folder``; return the number of files.

    Flattening ignores whatever folder structure the zip has (and any path
    tricks in member names), so images land directly in ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = Path(member.filename).name
                if member.is_dir() or not name or name.startswith(".") or "__MACOSX" in member.filename:
                    continue
                with zf.open(member) as source, open(folder / name, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                count += 1
    except (zipfile.BadZipFile, OSError) as err:
        raise DownloadError(f"{archive.name}: cannot extract ({err})") from err
    return count


def _metadata_name(path: Path) -> str:
    """``HAM10000_metadata.csv`` or ``.tab`` depending on the separator actually served."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        first_line = handle.readline()
    return "HAM10000_metadata.tab" if "\t" in first_line else "HAM10000_metadata.csv"


def _check_target(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DownloadError(f"{dest}: already exists and is not empty; remove it or choose another --dest")


def _fetch_all(base_url: str, records: list, work: Path, progress: Progress) -> None:
    """Download every record into ``work/_downloads`` and unpack it into ``work``."""
    downloads = work / "_downloads"
    downloads.mkdir()
    total, done = sum(int(r.get("originalFileSize") or r.get("filesize") or 0) for r in records), 0
    for record in records:
        target = downloads / record["filename"]
        done += download_file(base_url, record, target, progress=progress, done=done, total=total)
        if target.suffix == ".zip":
            progress(done, total, f"extracting {target.name}")
            extract(target, work / target.stem)
        else:
            os.replace(target, work / _metadata_name(target))
        target.unlink(missing_ok=True)
    shutil.rmtree(downloads)


def download_ham10000(
    dest: Path | str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    progress: Progress | None = None,
) -> Path:
    """Download HAM10000 (images, metadata, lesion masks) into ``dest``.

    Args:
        dest: the dataset folder; default ``core.contracts.paths.dataset_dir()``. It must
            not exist or be empty.
        base_url: the Dataverse server (a test passes a loopback server).
        progress: called with (bytes done, bytes total, file name) while
            downloading, e.g. to draw a progress bar.

    Returns:
        The dataset folder, complete and loadable by ``core.dataset.data.load_dataset``.

    Raises:
        DownloadError: the target is not empty, a file is missing from the
            listing, a transfer or check failed. Nothing is left at ``dest``.
    """
    dest = Path(dest) if dest else dataset_dir()
    progress = progress or (lambda done, total, name: None)
    _check_target(dest)
    available = list_files(base_url)
    wanted = (METADATA, *ARCHIVES)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise DownloadError(f"{base_url}: the dataset listing lacks {missing}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the dataset is not
    try:
        _fetch_all(base_url, [available[name] for name in wanted], work, progress)
        data.load_dataset(work)
        _check_target(dest)
        if dest.exists():
            dest.rmdir()
        os.replace(work, dest)
    except data.DatasetError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise DownloadError(f"downloaded files do not form a usable dataset: {err}") from err
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest

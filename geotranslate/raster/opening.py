"""Opening one raster source with GDAL: remote settings, and why an open failed.

:func:`open_dataset` opens a :class:`~geotranslate.raster.sources.RasterSource` without the
toolkit's checks (those are :func:`geotranslate.raster.io.open_raster`'s); a failure is one line
in the user's terms (no such file, HTTP status, credentials, a damaged archive). Remote reads
get GDAL settings derived from the AWS tools' variables. :func:`spectral_bands` tells the bands
that carry data from an alpha band. The sources' ``stack:`` and ``fuse:`` forms open their
parts with these, below the module that parses them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader

from geotranslate.errors import GeotranslateError, InputError, StorageError, first_line
from geotranslate.files import display_path, not_utf8

if TYPE_CHECKING:
    from geotranslate.raster.sources import RasterSource


#: GDAL settings while a remote source is opened, unless the user's environment sets them: no
#: directory listing (one request per file instead of listing a bucket or a web folder)
#: the URL schemes GDAL reads with /vsicurl/ and the tool can ask directly
HTTP_SCHEMES = ("http://", "https://")
REMOTE_OPEN_DEFAULTS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
#: environment variables :func:`apply_remote_config` set (and may update when the user's change)
_DERIVED: dict[str, str] = {}


def remote_config(environ: dict[str, str] | None = None) -> dict[str, str]:
    """GDAL settings for remote reads: ``AWS_ENDPOINT_URL`` (the AWS tools' variable)
    translated into GDAL's own, where the environment does not set those."""
    env = dict(os.environ if environ is None else environ)
    user = {k: v for k, v in env.items() if _DERIVED.get(k) != v}  # the user's own settings
    config = {}
    endpoint = user.get("AWS_ENDPOINT_URL_S3") or user.get("AWS_ENDPOINT_URL")
    if endpoint and "AWS_S3_ENDPOINT" not in user:
        parsed = urlparse(endpoint)
        config["AWS_S3_ENDPOINT"] = parsed.netloc or parsed.path
        if "AWS_HTTPS" not in user:
            config["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        if "AWS_VIRTUAL_HOSTING" not in user:
            config["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return config


def apply_remote_config() -> None:
    """Put :func:`remote_config` into the environment, where GDAL reads it on every request
    (from every thread); settings it put there earlier follow the user's current ones."""
    config = remote_config()
    for key in [k for k in _DERIVED if k not in config]:
        if os.environ.get(key) == _DERIVED.pop(key):
            del os.environ[key]
    for key, value in config.items():
        os.environ[key] = _DERIVED[key] = value


class SourceDataset(DatasetReader):
    """A dataset that carries the name its user gave it (a URL, ``stack:…``), not GDAL's."""

    source: RasterSource | None = None

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else super().name


def open_dataset(source: RasterSource) -> SourceDataset:
    """Open a source with GDAL, without the toolkit's checks; failures as one line."""
    if source.local:
        p = Path(source.gdal_name)
        if not p.exists():
            raise StorageError(f"{source.name}: no such file")
        if p.is_dir():
            raise StorageError(f"{source.name}: is a directory, not a raster")
        if not os.access(p, os.R_OK):
            raise StorageError(f"{source.name}: not readable (permission denied)")
    config = {}
    if not source.local:
        config = dict(REMOTE_OPEN_DEFAULTS)
        apply_remote_config()
    try:
        with rasterio.Env(**{k: v for k, v in config.items() if k not in os.environ}):
            ds = SourceDataset(source.gdal_name)
    except RasterioError as e:
        raise open_failure(source, e) from None
    except UnicodeEncodeError:
        raise not_utf8(source.gdal_name) from None
    ds.source = source
    return ds


def open_failure(source: RasterSource, error: Exception) -> GeotranslateError:
    """Why a source could not be opened, in the user's terms: an :class:`InputError` when what
    was read is not a raster (or a damaged archive), a :class:`StorageError` when it could not
    be reached (HTTP status, credentials, a time-out)."""
    not_a_raster = InputError(f"{source.name}: cannot open as a raster ({first_line(error)})")
    if source.local and not source.gdal_name.startswith("<"):
        return not_a_raster
    archive = _archive_failure(source)
    if archive is not None:
        return InputError(f"{source.name}: {archive}")
    remote = _remote_failure(source, error)
    return StorageError(f"{source.name}: {remote}") if remote is not None else not_a_raster


def _remote_failure(source: RasterSource, error: Exception) -> str | None:
    """Why a remote source could not be read (HTTP status, credentials, a time-out), or None
    when nothing says it was not reached."""
    message = first_line(error)
    text = str(error)
    http = re.search(r"HTTP (?:response )?code:? ?(\d{3})", text)
    s3 = "/vsis3/" in source.gdal_name
    if re.search(r"NoSuchBucket|bucket does not exist", text):
        return "cannot open: no such bucket"
    if re.search(r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|InvalidAccessKeyId|"
                 r"SignatureDoesNotMatch|AccessDenied|credentials", text) or (
            s3 and http and http[1] == "403"):
        return "cannot open: access denied: check AWS credentials (AWS_ACCESS_KEY_ID, " \
            "AWS_SECRET_ACCESS_KEY)"
    if re.search(r"timed out|Timeout", text, re.IGNORECASE):
        return "cannot open: timed out"
    if re.search(r"Couldn't connect|Connection refused|Could not resolve|Failed to connect",
                 text):
        return f"cannot open: unreachable ({message})"
    if http:
        return f"cannot open: HTTP {http[1]}"
    status = _http_status(source) if "/vsicurl/" in source.gdal_name else None
    if status is not None:
        return status
    if "does not exist in the file system" in text or "key does not exist" in text:
        return "cannot open: not found" + (" (no such key)" if s3 else "")
    return None


def _archive_failure(source: RasterSource) -> str | None:
    """Why a ``/vsizip/`` or ``/vsitar/`` name did not open: the archive is damaged or not one,
    or it lacks the member; None when the archive looks sound (GDAL's reason then stands)."""
    import tarfile
    import zipfile

    name = source.gdal_name
    kind = "zip" if name.startswith("/vsizip/") else "tar" if name.startswith("/vsitar/") else None
    if kind is None or len(source.files) != 1:
        return None
    archive = source.files[0]
    member = name.split(archive, 1)[-1].lstrip("/}")
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                members = set(z.namelist())
        else:
            with tarfile.open(archive) as t:
                members = set(t.getnames())
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError):
        return f"cannot open: {display_path(archive)} is not a {kind} archive, or is truncated"
    if member and member not in members:
        return f"cannot open: {display_path(archive)} has no member {member!r}"
    return None


def _http_status(source: RasterSource) -> str | None:
    """GDAL hides an HTTP failure behind "does not exist": ask the server once, briefly."""
    import urllib.error
    import urllib.request

    url = source.gdal_name.split("/vsicurl/", 1)[1]
    if not url.startswith(HTTP_SCHEMES):
        return None
    timeout = float(os.environ.get("GDAL_HTTP_TIMEOUT", "30") or 30)
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return f"cannot open: HTTP {e.code}"
    except TimeoutError:
        return "cannot open: timed out"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return "cannot open: timed out"
        why = first_line(reason) if isinstance(reason, BaseException) else str(reason)
        return f"cannot open: unreachable ({why})"


def alpha_index(ds: rasterio.DatasetReader) -> int | None:
    """1-based index of the alpha band, if the dataset has one."""
    for i, ci in enumerate(ds.colorinterp):
        if ci == ColorInterp.alpha:
            return i + 1
    return None


def spectral_bands(ds: rasterio.DatasetReader) -> list[int]:
    """1-based indexes of the bands that carry data: an alpha band is a mask, not a band.

    A raster whose only bands are alpha holds no data: refused here, for every reader.
    """
    bands = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha]
    if not bands:
        raise InputError(
            f"{ds.name}: has no data band (its {ds.count} band(s) are alpha, a mask)"
        )
    return bands

"""Photos, whatever the channel: validate with Pillow, store content-addressed under MEDIA_DIR, make a thumbnail.

Layout under MEDIA_DIR (paths relative to it are what the database keeps):
    <sha[:2]>/<sha>.jpg   or  <sha[:2]>/<sha>.png     the photo as received (JPEG/PNG bytes kept as is)
    thumbs/<sha>.jpg                                  a small JPEG, EXIF orientation applied
``sha`` is the sha256 of the stored photo bytes, so the same photo sent twice is stored once.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from flows.types import PhotoRef

# refusal reasons: catalog keys (flows/catalog/channels.yaml)
TOO_BIG = "channel.photo_too_big"
NOT_AN_IMAGE = "channel.photo_not_image"
TOO_MANY_PIXELS = "channel.photo_too_many_pixels"

THUMB_SIZE = (320, 320)
# formats kept byte for byte; anything else Pillow can read (WEBP, BMP, GIF...) is re-encoded as JPEG
_KEEP = {"JPEG": "jpg", "PNG": "png"}
_ACCEPTED = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867
_DATETIME = 306


@dataclass(frozen=True)
class StoredPhoto:
    """Where a validated photo lives; ``ref`` is what the flows get."""

    ref: PhotoRef
    path: str  # relative to MEDIA_DIR
    thumb_path: str  # relative to MEDIA_DIR
    size_bytes: int


def store_photo(data: bytes, *, media_dir: Path, max_bytes: int, max_pixels: int) -> StoredPhoto | str:
    """Validate ``data`` and store it; returns the stored photo or a refusal reason (a catalog key)."""
    if len(data) > max_bytes:
        return TOO_BIG
    checked = _check(data, max_pixels=max_pixels)
    if isinstance(checked, str):
        return checked
    image, fmt = checked
    try:
        # cheap phones write broken EXIF; Pillow warns ("Corrupt EXIF data") and goes on: so do we, quietly
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            taken_at = _taken_at(image)
            oriented = ImageOps.exif_transpose(image)
        if fmt in _KEEP:
            stored, ext = data, _KEEP[fmt]
        else:
            stored, ext = _to_jpeg(oriented), "jpg"
        sha = hashlib.sha256(stored).hexdigest()
        rel = f"{sha[:2]}/{sha}.{ext}"
        thumb_rel = f"thumbs/{sha}.jpg"
        _write_once(media_dir / rel, stored)
        if not (media_dir / thumb_rel).exists():
            _write_once(media_dir / thumb_rel, _thumbnail(oriented))
        width, height = oriented.size
    finally:
        image.close()
    return StoredPhoto(
        ref=PhotoRef(sha256=sha, width=width, height=height, taken_at=taken_at),
        path=rel,
        thumb_path=thumb_rel,
        size_bytes=len(stored),
    )


def photo_path(media_dir: Path, sha256: str) -> str | None:
    """The stored photo's path relative to MEDIA_DIR, or None when it is not there."""
    for ext in ("jpg", "png"):
        rel = f"{sha256[:2]}/{sha256}.{ext}"
        if (media_dir / rel).is_file():
            return rel
    return None


def thumb_path(sha256: str) -> str:
    """The thumbnail's path relative to MEDIA_DIR."""
    return f"thumbs/{sha256}.jpg"


def _check(data: bytes, *, max_pixels: int) -> tuple[Image.Image, str] | str:
    """A fully decoded image and its format, or a refusal reason."""
    try:
        # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that, at open time; our own
        # (usually lower) limit is checked on the header before anything is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data": the image itself may be fine
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format or ""
                if probe.width * probe.height > max_pixels:
                    return TOO_MANY_PIXELS
                probe.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return TOO_MANY_PIXELS
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        # not an image, truncated or corrupt (Pillow raises all of these)
        return NOT_AN_IMAGE
    if fmt not in _ACCEPTED:
        image.close()
        return NOT_AN_IMAGE
    return image, fmt


def _taken_at(image: Image.Image) -> str | None:
    """EXIF DateTimeOriginal (or DateTime) as ISO 8601 local time, when present and sane."""
    try:
        exif = image.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    except Exception:  # noqa: BLE001 - broken EXIF must not refuse a good photo
        return None
    if not isinstance(raw, str):
        return None
    raw = raw.strip().rstrip("\x00")
    # "YYYY:MM:DD HH:MM:SS"
    if len(raw) < 19 or raw[4] != ":" or raw[7] != ":":
        return None
    iso = f"{raw[0:4]}-{raw[5:7]}-{raw[8:10]}T{raw[11:19]}"
    return iso if iso[:4].isdigit() and iso[:4] != "0000" else None


def _to_jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def _thumbnail(image: Image.Image) -> bytes:
    thumb = image.convert("RGB")
    thumb.thumbnail(THUMB_SIZE)
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=80)
    return out.getvalue()


def _write_once(path: Path, data: bytes) -> None:
    """Write atomically; a file already there has the same content (content-addressed), so keep it."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Photos are validated with Pillow and stored once, content-addressed, with a thumbnail."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

from PIL import Image

from bot.media import NOT_AN_IMAGE, TOO_BIG, TOO_MANY_PIXELS, StoredPhoto, photo_path, store_photo, thumb_path
from flows.i18n import t

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


def jpeg_with_exif(
    size: tuple[int, int] = (400, 200), *, orientation: int = 6, taken: str = "2026:11:05 09:30:00"
) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[36867] = taken
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=85)
    return out.getvalue()


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 10)).save(out, "PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions with almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_real_jpeg_is_stored_once_with_thumbnail_orientation_and_date(tmp_path: Path) -> None:
    data = jpeg_with_exif()
    sha = hashlib.sha256(data).hexdigest()

    first = store_photo(data, media_dir=tmp_path, **LIMITS)
    second = store_photo(data, media_dir=tmp_path, **LIMITS)

    assert isinstance(first, StoredPhoto)
    assert first == second
    assert first.ref.sha256 == sha
    assert (first.ref.width, first.ref.height) == (200, 400)  # EXIF orientation 6: rotated upright
    assert first.ref.taken_at == "2026-11-05T09:30:00"
    assert first.path == f"{sha[:2]}/{sha}.jpg" == photo_path(tmp_path, sha)
    assert first.thumb_path == f"thumbs/{sha}.jpg" == thumb_path(sha)
    assert (tmp_path / first.path).read_bytes() == data  # kept byte for byte, EXIF included
    with Image.open(tmp_path / first.thumb_path) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == (160, 320)
    assert files_under(tmp_path) == [tmp_path / first.path, tmp_path / first.thumb_path]


def test_png_is_kept_as_png(tmp_path: Path) -> None:
    stored = store_photo(png((64, 48)), media_dir=tmp_path, **LIMITS)
    assert isinstance(stored, StoredPhoto)
    assert stored.path.endswith(".png")
    assert stored.ref.taken_at is None
    assert (stored.ref.width, stored.ref.height) == (64, 48)


def test_text_file_renamed_jpg_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    result = store_photo(b"Day la mot tep van ban, khong phai anh.\n" * 10, media_dir=tmp_path, **LIMITS)
    assert result == NOT_AN_IMAGE
    assert "không mở được ảnh" in t(result)
    assert files_under(tmp_path) == []


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = jpeg_with_exif((800, 600))
    assert store_photo(data[: len(data) // 2], media_dir=tmp_path, **LIMITS) == NOT_AN_IMAGE
    assert files_under(tmp_path) == []


def test_too_many_bytes_is_refused_before_decoding(tmp_path: Path) -> None:
    data = jpeg_with_exif()
    assert store_photo(data, media_dir=tmp_path, max_bytes=len(data) - 1, max_pixels=10**9) == TOO_BIG
    assert t(TOO_BIG).startswith("⚠️")


def test_pixel_limit_from_settings(tmp_path: Path) -> None:
    assert (
        store_photo(png((200, 200)), media_dir=tmp_path, max_bytes=10**7, max_pixels=10_000)
        == TOO_MANY_PIXELS
    )
    assert files_under(tmp_path) == []


def test_pixel_bombs_are_refused_without_decoding(tmp_path: Path) -> None:
    # above Pillow's hard limit (DecompressionBombError) and between its warning and hard limits
    for width, height in ((100_000, 100_000), (10_000, 10_000), (7_000, 7_000)):
        bomb = png_header_only(width, height)
        assert len(bomb) < 200
        assert store_photo(bomb, media_dir=tmp_path, **LIMITS) == TOO_MANY_PIXELS, (width, height)
    assert files_under(tmp_path) == []

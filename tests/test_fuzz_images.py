"""Images that are not what they claim: refused or handled, with a clear Vietnamese message.

bot/media.py directly, then the same files through the Telegram path (webhook → inbox → normaliser →
outbox → FakeTelegram): a truncated JPEG, a PNG bomb (huge pixel count, tiny file), a text file named
.jpg, a 30 MB photo, a JPEG with each EXIF orientation (1–8, and nonsense values), random bytes.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.media import NOT_AN_IMAGE, TOO_BIG, TOO_MANY_PIXELS, StoredPhoto, store_photo
from flows.i18n import t
from tests.fakes import telegram_server as tg
from tests.test_telegram_e2e import Driven, Household, tg_settings
from tests.test_telegram_media import png_header_only

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


def jpeg(size: tuple[int, int] = (400, 300), orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    for x in range(0, size[0], 7):
        image.putpixel((x, 0), (0, 0, 255))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=85)
    return out.getvalue()


def big_jpeg(target: int = 30 * 1024 * 1024) -> bytes:
    """A real JPEG of at least ``target`` bytes (noise compresses badly)."""
    side = 4000
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=100)
    data = out.getvalue()
    return data + b"\0" * max(0, target - len(data))  # trailing bytes after EOI: still a JPEG to readers


BAD = {
    "truncated_jpeg": (lambda: jpeg()[:600], NOT_AN_IMAGE),
    "png_bomb": (lambda: png_header_only(100_000, 100_000), TOO_MANY_PIXELS),
    "text_named_jpg": (lambda: b"Day khong phai la anh.\n" * 40, NOT_AN_IMAGE),
    "empty": (lambda: b"", NOT_AN_IMAGE),
    "html": (lambda: b"<html><body>not an image</body></html>", NOT_AN_IMAGE),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_are_refused_with_a_reason(name: str, tmp_path: Path) -> None:
    make, reason = BAD[name]
    assert store_photo(make(), media_dir=tmp_path, **LIMITS) == reason
    assert not any(tmp_path.rglob("*.*")), "nothing stored for a refused photo"
    assert t(reason) and t(reason) != reason  # a Vietnamese message exists for it


def test_a_30_mb_photo_is_refused_as_too_big(tmp_path: Path) -> None:
    assert store_photo(big_jpeg(), media_dir=tmp_path, **LIMITS) == TOO_BIG


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 255, 65535])
def test_any_exif_orientation_is_stored_upright_or_as_is(orientation: int, tmp_path: Path) -> None:
    stored = store_photo(jpeg((400, 300), orientation), media_dir=tmp_path, **LIMITS)
    assert isinstance(stored, StoredPhoto)
    turned = orientation in (5, 6, 7, 8)
    assert (stored.ref.width, stored.ref.height) == ((300, 400) if turned else (400, 300))
    with Image.open(tmp_path / stored.thumb_path) as thumb:
        assert max(thumb.size) <= 320


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=2000),
    st.tuples(st.integers(min_value=0, max_value=5000), st.binary(max_size=64)).map(
        lambda t_: jpeg((64, 48))[: t_[0]] + t_[1]
    ),
    st.tuples(st.integers(min_value=8, max_value=3000), st.integers(min_value=0, max_value=255)).map(
        lambda t_: _flip(jpeg((64, 48)), t_[0], t_[1])
    ),
))
def test_random_and_corrupted_bytes_never_raise(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = store_photo(data, media_dir=Path(tmp), **LIMITS)
    assert isinstance(result, StoredPhoto) or result in (NOT_AN_IMAGE, TOO_MANY_PIXELS, TOO_BIG)


def _flip(data: bytes, at: int, value: int) -> bytes:
    at = min(at, len(data) - 1)
    return data[:at] + bytes([value]) + data[at + 1 :]


def test_bad_images_through_telegram_get_a_vietnamese_answer(engine, tmp_path: Path) -> None:
    """Sent as photos and as files, over the real webhook path; the answer is the refusal, nothing stored."""
    with tg.FakeTelegram().running() as fake:
        fake.add_file("trunc", jpeg()[:600], path="photos/trunc.jpg")
        fake.add_file("bomb", png_header_only(100_000, 100_000), path="documents/anh.png")
        fake.add_file("txt", b"Day khong phai la anh.\n" * 40, path="documents/anh.jpg")
        fake.add_file("odd", jpeg((400, 300), 6), path="photos/odd.jpg")
        settings_ = tg_settings(tmp_path, fake)

        async def story() -> list[list[str]]:
            answers = []
            async with Driven(settings_, engine) as app:
                person = Household(fake, 9001, app.post)
                await person.photo("trunc")
                answers.append(person.texts())
                await person.file("bomb", "anh.png", "image/png")
                answers.append(person.texts())
                await person.file("txt", "anh.jpg", "image/jpeg")
                answers.append(person.texts())
                # a 30 MB photo: Telegram says its size, it is refused before any download
                await person.send(tg.photo_update(next(person.ids), 9001, "huge", file_size=30 * 1024 * 1024))
                answers.append(person.texts())
                await person.photo("odd")  # accepted: a photo outside a question is asked where it belongs
                answers.append(person.texts())
            return answers

        answers = asyncio.run(story())
        downloads = [c.params["path"] for c in fake.calls_of("file")]
    assert answers[0] == [t(NOT_AN_IMAGE)]
    assert answers[1] == [t(TOO_MANY_PIXELS)]
    assert answers[2] == [t(NOT_AN_IMAGE)]
    assert answers[3] == [t(TOO_BIG)]
    assert answers[4] and all(x not in (t(NOT_AN_IMAGE), t(TOO_BIG), t("common.error")) for x in answers[4])
    assert "huge" not in " ".join(downloads)
    media = settings_.media_path
    stored = sorted(p.name for p in media.rglob("*") if p.is_file()) if media.exists() else []
    assert len(stored) <= 2  # only the good photo and its thumbnail

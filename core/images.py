"""Pictures for vision models: which uploads are images, and the bytes a model is sent.

Ollama's vision models read PNG and JPEG. A GIF (its first frame), a WEBP, or a picture larger
than a model would look at is re-encoded with Pillow. An upload is a stranger's bytes: a small
file can claim a huge picture, so what a picture costs to decode is worked out from its header
and bounded before any pixel is decoded, and it is decoded at the smallest size that will do
(a JPEG's own draft scaling, then reduce() before the final resize). Each picture is prepared
once: later turns of a conversation send it again from a small cache.
"""
from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict

from PIL import Image, UnidentifiedImageError

MAX_SIDE = 2048  # vision encoders work at a fraction of this; larger only costs bytes and time
# What decoding one picture may allocate, counted as Pillow stores pixels (1 byte for L/P/1, 2 for
# I;16, 4 for RGB and everything else) plus the decoder's own buffers. Peak memory is this plus the
# reduce()d copy (a quarter or less) and the final picture: under 200 MB for one picture being
# prepared (the image pool prepares two at a time). 7000×7000 RGB (196 MB) is refused.
MAX_DECODED_BYTES = 150 * 1024 ** 2
# 40 million pixels: 160 MB as RGB, over what a vision model resolves (~4 MP) tenfold; a phone's
# 48-50 MP photo is a JPEG, which draft() decodes at a half or a quarter of its size first.
MAX_PIXELS = 40_000_000
CACHE_BYTES = 32 * 1024 ** 2  # model-ready pictures kept for later turns (about a dozen photos)

_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"}  # reduce() averages these
_EXTRA_BYTES = {"webp": 12}  # libwebp: its own RGBA canvas and a copy, then Pillow's (measured: 16 in all)


def sniff(data: bytes) -> str | None:
    """The image format from the first bytes, or None: file names and content types can lie."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class NotAnImage(ValueError):
    """The bytes do not decode as a picture a model can be shown (the message says why)."""


def _bytes_per_pixel(mode: str) -> int:
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def decode_cost(kind: str, mode: str, size: tuple[int, int]) -> int:
    """Bytes decoding a picture of this mode and size allocates at once: the picture, plus a full-size
    RGB(A) copy when its mode cannot be reduced as it is (a palette), plus the decoder's own buffer."""
    pixels = size[0] * size[1]
    cost = pixels * (_bytes_per_pixel(mode) + _EXTRA_BYTES.get(kind, 0))
    return cost if mode in _REDUCIBLE else cost + pixels * 4


def _fitted(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def for_model(data: bytes) -> bytes:
    """PNG or JPEG bytes a vision model reads: as they are when already fit, else re-encoded at most
    MAX_SIDE a side; NotAnImage (with the reason) for anything else or anything too costly to decode.
    CPU work: call it off the event loop."""
    kind = sniff(data)
    if kind is None:
        raise NotAnImage("not a PNG, JPEG, GIF or WEBP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                claimed = picture.size
                if kind in ("png", "jpeg") and max(claimed) <= MAX_SIDE:
                    return data
                extra = 0
                if kind == "jpeg":  # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly: never the full size
                    if picture.info.get("progressive") or _scans(data) > 1:
                        # ...but a picture in several scans has every coefficient of the full size held first
                        extra = claimed[0] * claimed[1] * 2 * max(3, len(picture.getbands()))
                    picture.draft(picture.mode, _fitted(claimed))
                else:
                    picture.seek(0)  # a GIF's or an animated WEBP's first frame
                _check_cost(kind, picture.mode, claimed, picture.size, extra)
                return _encode(_shrunk(picture), "JPEG" if kind == "jpeg" else "PNG")
    except NotAnImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise NotAnImage("the picture is too large to look at") from exc
    except MemoryError as exc:
        raise NotAnImage("the picture is too large to look at (out of memory)") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise NotAnImage(f"the picture could not be read ({type(exc).__name__})") from exc


def _scans(data: bytes) -> int:
    """How many scans (SOS segments) a JPEG has; more than one makes libjpeg buffer the whole picture's
    coefficients, progressive or not. Walks the segment headers only, up to the first scan's data."""
    count, at = 0, 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            at += 1
            continue
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            at += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # the end
            break
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0xDA:
            count += 1
            at += 2 + length
            while True:  # entropy-coded data: on to the next marker (0xFF not followed by 0, a restart, 0xFF)
                at = data.find(b"\xff", at)
                if at < 0 or at + 1 >= len(data):
                    return count
                if data[at + 1] == 0 or 0xD0 <= data[at + 1] <= 0xD7 or data[at + 1] == 0xFF:
                    at += 1
                    continue
                break
            continue
        at += 2 + length
    return count


def _check_cost(kind: str, mode: str, claimed: tuple[int, int], decoded: tuple[int, int], extra: int) -> None:
    width, height = claimed
    pixels = decoded[0] * decoded[1]
    cost = decode_cost(kind, mode, decoded) + extra
    if pixels > MAX_PIXELS or cost > MAX_DECODED_BYTES:
        raise NotAnImage(f"the picture is {width}×{height} pixels, too large to look at: it would take "
                         f"{cost / 1e6:.0f} MB to decode, and pictures may take at most "
                         f"{MAX_DECODED_BYTES / 1e6:.0f} MB ({MAX_PIXELS // 1_000_000} million pixels); "
                         "send a smaller one")


def _shrunk(picture: Image.Image) -> Image.Image:
    """The picture decoded and brought to at most MAX_SIDE a side, holding one full-size copy at a time."""
    target = _fitted(picture.size)
    mode = "RGBA" if "A" in picture.getbands() or picture.mode in ("P", "PA") else "RGB"
    picture.load()
    frame: Image.Image = picture
    if frame.mode not in _REDUCIBLE:  # a palette's indices cannot be averaged: colours first (counted in the cost)
        frame = frame.convert(mode)
        picture.close()
    factor = min(frame.width // target[0], frame.height // target[1])
    if factor >= 2:  # a cheap box average down to at least the target, then a good resample from there
        reduced = frame.reduce(factor)
        frame.close()
        picture.close()
        frame = reduced
    if frame.size != target:
        resized = frame.resize(target, Image.Resampling.LANCZOS)
        frame.close()
        frame = resized
    return frame if frame.mode == mode else frame.convert(mode)


def _encode(frame: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":  # a photo stays a photo: a tenth of the bytes of a PNG of it
        frame.convert("RGB").save(out, format="JPEG", quality=90)
    else:
        frame.save(out, format="PNG", optimize=False)
    return out.getvalue()


class PictureCache:
    """Model-ready pictures by the SHA-256 of their raw bytes, least recently used out first, bounded
    in total bytes: a conversation's earlier pictures go with every later turn, and decoding them
    again each time cost seconds and hundreds of MB. A refusal is kept too (its reason, a few bytes).
    Thread-safe: pictures are prepared in a thread pool."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.prepared = 0  # pictures actually decoded (or refused) rather than found here
        self._items: OrderedDict[bytes, bytes | NotAnImage | None] = OrderedDict()  # None: sent as it came
        self._lock = threading.Lock()

    def for_model(self, data: bytes) -> bytes:
        """images.for_model(data), from the cache when these bytes were prepared before."""
        key = hashlib.sha256(data).digest()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._answer(self._items[key], data)
        try:
            fit = for_model(data)
        except NotAnImage as exc:
            self._put(key, exc)
            raise
        self._put(key, None if fit is data else fit)
        return fit

    @staticmethod
    def _answer(value: bytes | NotAnImage | None, data: bytes) -> bytes:
        if isinstance(value, NotAnImage):
            raise NotAnImage(str(value))
        return data if value is None else value

    @staticmethod
    def _weight(value: bytes | NotAnImage | None) -> int:
        return 64 + (len(value) if isinstance(value, bytes) else len(str(value or "")))

    def _put(self, key: bytes, value: bytes | NotAnImage | None) -> None:
        weight = self._weight(value)
        with self._lock:
            self.prepared += 1
            if weight > self.max_bytes or key in self._items:
                return
            self._items[key] = value
            self.size += weight
            while self.size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.size -= self._weight(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0


CACHE = PictureCache()


def prepared(data: bytes) -> bytes:
    """for_model through the process-wide cache: each picture is decoded once, not once per turn."""
    return CACHE.for_model(data)

"""Pictures for vision models: which uploads are images, and the bytes a model is sent.

Ollama's vision models read PNG and JPEG. A GIF (its first frame), a WEBP, or a picture larger
than a model would look at is re-encoded as PNG with Pillow, which also refuses decompression
bombs: an upload is a stranger's bytes.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

MAX_SIDE = 2048  # vision encoders work at a fraction of this; larger only costs bytes and time
MAX_PIXELS = 50_000_000  # what Pillow may decode at all (a small file can claim a huge picture)


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
    """The bytes do not decode as a picture a model can be shown."""


def for_model(data: bytes) -> bytes:
    """PNG or JPEG bytes a vision model reads: as they are when already fit, else re-encoded.
    CPU work: call it off the event loop."""
    kind = sniff(data)
    if kind is None:
        raise NotAnImage("not a PNG, JPEG, GIF or WEBP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                width, height = picture.size
                if width * height > MAX_PIXELS:
                    raise NotAnImage(f"the picture is {width}×{height} pixels, too large to look at")
                if kind in ("png", "jpeg") and max(width, height) <= MAX_SIDE:
                    return data
                picture.seek(0)  # a GIF's or an animated WEBP's first frame
                frame = picture.convert("RGBA" if "A" in picture.getbands() or picture.mode == "P" else "RGB")
                frame.thumbnail((MAX_SIDE, MAX_SIDE))
                out = io.BytesIO()
                frame.save(out, format="PNG", optimize=False)
                return out.getvalue()
    except NotAnImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise NotAnImage("the picture is too large to look at") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"the picture could not be read ({type(exc).__name__})") from exc

"""What a request may hold, checked before anything is decoded.

A served model faces clients it does not know. Each image arrives as base64 text of the image
file's bytes (the ``image`` column); server-side paths (``path``) are read only when the model
was loaded with an explicit root (``model_config={"path_root": ...}``, as ``noisytail predict``
does), never in the registered model as served. Every limit is checked at the cheapest point:
images per request and their base64 text together before anything else, bytes per image before
decoding base64's output, pixels
per image from the file's header before its pixels are decoded (PIL's own bomb check, which only
warns below 179 megapixels, becomes an error). A violation is a ``RequestError`` naming the row
and the limit; the server answers it as a client error and keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image

from noisytail.config.serving import ServingLimits

# PIL only warns between MAX_IMAGE_PIXELS and twice that; open_image refuses those images as an
# error instead. Set once here: warnings.catch_warnings per request is not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class RequestError(ValueError):
    """A request the model refuses; its message names the row and the rule it broke."""


def request_images(
    frame: pd.DataFrame, limits: ServingLimits, path_root: str | Path | None = None
) -> list[bytes]:
    """The image files' bytes of each row of a request, every limit but pixels checked."""
    columns = [c for c in ("image", "path") if c in frame.columns]
    if len(columns) != 1:
        wanted = "an 'image' column (base64 of image file bytes)"
        if path_root is not None:
            wanted += " or a 'path' column"
        # (the server drops columns its signature does not name: what was sent is not known)
        raise RequestError(f"the request needs {wanted}" + (", not both" if columns else ""))
    if len(frame) == 0:
        raise RequestError("the request holds no rows")
    if len(frame) > limits.max_images:
        raise RequestError(f"the request holds {len(frame)} images; the limit is "
                           f"limits.max_images = {limits.max_images}")  # fmt: skip
    if columns[0] == "image":
        text = sum(len(v) for v in frame["image"] if isinstance(v, str))
        if text > (most := limits.max_request_bytes):
            raise RequestError(f"the request's images are {text} bytes of base64; the limit "
                               f"is limits.max_request_bytes = {most}")  # fmt: skip
    if columns[0] == "path":
        if path_root is None:
            raise RequestError("this model reads no server-side paths: send the image bytes "
                               "base64-encoded in an 'image' column")  # fmt: skip
        return [read_under_root(value, path_root, limits, row)
                for row, value in enumerate(frame["path"])]  # fmt: skip
    return [decode_base64(value, limits, row) for row, value in enumerate(frame["image"])]


def decode_base64(value: object, limits: ServingLimits, row: int) -> bytes:
    """One ``image`` cell: base64 text of at most ``max_image_bytes`` bytes."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"row {row}: 'image' must be non-empty base64 text")
    if len(value) > 4 * (limits.max_image_bytes // 3 + 1) + 4:  # before decoding anything
        raise RequestError(f"row {row}: the image is over limits.max_image_bytes = "
                           f"{limits.max_image_bytes}")  # fmt: skip
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"row {row}: 'image' is not valid base64 ({error})") from None
    if len(raw) > limits.max_image_bytes:
        raise RequestError(f"row {row}: the image is {len(raw)} bytes; the limit is "
                           f"limits.max_image_bytes = {limits.max_image_bytes}")  # fmt: skip
    return raw


def read_under_root(value: object, root: str | Path, limits: ServingLimits, row: int) -> bytes:
    """One ``path`` cell, resolved (links followed) and refused outside ``root``."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"row {row}: 'path' must be a non-empty string")
    base = Path(root).resolve()
    try:
        path = (base / value).resolve()  # an absolute value replaces base: checked below
        if not path.is_relative_to(base):
            raise RequestError(f"row {row}: {value[:200]} is outside the allowed root")
        with path.open("rb") as file:  # one handle: what is checked is what is read
            raw = file.read(limits.max_image_bytes + 1)
    except RequestError:
        raise
    except (OSError, ValueError):  # missing, a folder, a NUL byte, a name too long
        raise RequestError(f"row {row}: {value[:200]}: no readable file under the root") from None
    if len(raw) > limits.max_image_bytes:
        raise RequestError(f"row {row}: {value[:200]} is over limits.max_image_bytes = "
                           f"{limits.max_image_bytes}")  # fmt: skip
    return raw


# The decoders of the file types a manifest may hold (data.sources.IMAGE_SUFFIXES); PIL's
# others (EPS runs Ghostscript, PSD, FITS, ...) never see a client's bytes.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")


def open_image(raw: bytes, limits: ServingLimits, row: int = 0) -> Image.Image:
    """The image of a file's bytes, opened (its header read, no pixel decoded) and checked:
    a known format, at most ``max_pixels`` and PIL's ``MAX_IMAGE_PIXELS``."""
    try:
        image = Image.open(io.BytesIO(raw), formats=FORMATS)
    except Image.DecompressionBombError as error:  # over twice PIL's limit: refused at open
        raise RequestError(f"row {row}: refused as a decompression bomb ({error})") from None
    except Exception as error:  # noqa: BLE001 - crafted bytes make PIL's parsers raise
        # anything (OSError, SyntaxError, EOFError, struct.error, IndexError, ...): the client's
        raise RequestError(f"row {row}: not a readable image ({_short(error)})") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise RequestError(
            f"row {row}: the image is {width} x {height} = {width * height} pixels; "
            f"the limit is limits.max_pixels = {limits.max_pixels}"
        )
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        image.close()
        raise RequestError(f"row {row}: refused as a decompression bomb ({width} x {height}: "
                           f"over PIL's MAX_IMAGE_PIXELS)")  # fmt: skip
    return image


def check_images(files: list[bytes], limits: ServingLimits) -> None:
    """Every file's header, before any work: a bad last image costs no prediction."""
    for row, raw in enumerate(files):
        open_image(raw, limits, row).close()


def decode_image(raw: bytes, limits: ServingLimits, row: int = 0) -> Image.Image:
    """An image file's bytes decoded, its header checked first (``open_image``)."""
    with open_image(raw, limits, row) as image:
        try:
            image.load()
        except Exception as error:  # noqa: BLE001 - truncated or corrupt pixels, as above
            raise RequestError(f"row {row}: not a readable image ({_short(error)})") from None
        return image.copy()


def _short(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"

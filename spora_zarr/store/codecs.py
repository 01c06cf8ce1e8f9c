"""The zarr v3 JPEG codec of slide arrays: ``imagecodecs_jpeg``, as imagecodecs' own zarr codecs spell it.

A JPEG-compressed RGB slide keeps its source tiles as its chunks (no decode
and re-encode, ``docs/store_layout.md``). A chunk is then one JPEG stream of
an interleaved ``(y, x, 3)`` tile, so the arrays' codecs are
``transpose(order=[1, 2, 0])`` (the stored ``(c, y, x)`` chunk seen as
``(y, x, c)``) followed by this array-to-bytes codec, inside the shards.

The codec's name and configuration are those of ``imagecodecs.zarr.Jpeg``
(``imagecodecs-zarr``, Python 3.12+): where imagecodecs ships that module, its
class is the one registered (zarr-python then finds one implementation under
the name, also through that package's entry point); elsewhere this module's
implementation is. Registering happens when this module is imported (the
writer and the readers import it) and through spora_zarr's ``zarr.codecs``
entry point, so plain zarr-python opens the arrays too.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = ["JPEG_CODEC", "Jpeg", "jpeg_chunk_codecs"]

JPEG_CODEC = "imagecodecs_jpeg"
_TEXT = ("tables", "header")  # bytes, stored base64
_KEYS = ("level", "colorspace_data", "colorspace_jpeg", "subsampling", "optimize", "fancyupsampling")


def decode_jpeg(data: bytes | np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """One JPEG chunk decoded to ``(h, w, c)`` with the codec configuration ``config`` (GIL released)."""
    import imagecodecs

    header = config.get("header")
    if header is not None:
        data = b"".join((header, bytes(data), b"\xff\xd9"))
    elif isinstance(data, np.ndarray):
        data = data.tobytes()
    options = {"fancyupsampling": config["fancyupsampling"]} if config.get("fancyupsampling") is not None else {}
    return imagecodecs.jpeg8_decode(
        data, tables=config.get("tables"), colorspace=config.get("colorspace_jpeg"), outcolorspace=config.get("colorspace_data"), **options
    )


@dataclass(frozen=True)
class _SporaJpeg(ArrayBytesCodec):
    """JPEG chunks, configured as ``imagecodecs.zarr.Jpeg`` (used where imagecodecs lacks that module)."""

    is_fixed_size = False

    level: int | None = None
    tables: bytes | None = None
    header: bytes | None = None
    colorspace_data: str | None = None
    colorspace_jpeg: str | None = None
    subsampling: str | None = None
    optimize: bool | None = None
    fancyupsampling: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, parsed = parse_named_configuration(data, JPEG_CODEC, require_configuration=False)
        config: dict[str, Any] = dict(parsed or {})
        for key in _TEXT:
            value = config.get(key)
            if isinstance(value, str):
                config[key] = base64.b64decode(value.encode())
        return cls(**{k: v for k, v in config.items() if k in _TEXT + _KEYS})

    def to_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {k: getattr(self, k) for k in _KEYS if getattr(self, k) is not None}
        config.update({k: base64.b64encode(getattr(self, k)).decode() for k in _TEXT if getattr(self, k) is not None})
        return {"name": JPEG_CODEC, "configuration": config} if config else {"name": JPEG_CODEC}

    def _config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _TEXT + _KEYS}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        decoded = decode_jpeg(chunk_bytes.as_numpy_array(), self._config())
        return chunk_spec.prototype.nd_buffer.from_numpy_array(decoded.reshape(chunk_spec.shape))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        import imagecodecs

        encoded = imagecodecs.jpeg8_encode(
            np.ascontiguousarray(chunk_array.as_numpy_array()),
            level=self.level,
            colorspace=self.colorspace_data,
            outcolorspace=self.colorspace_jpeg,
            subsampling=self.subsampling,
            optimize=self.optimize,
        )
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


def _implementation() -> type[ArrayBytesCodec]:
    """imagecodecs' own codec class where it has one, else this module's."""
    if importlib.util.find_spec("imagecodecs") is not None and importlib.util.find_spec("imagecodecs.zarr") is not None:
        from imagecodecs.zarr import Jpeg as ImagecodecsJpeg  # type: ignore[import-not-found,unused-ignore]

        return ImagecodecsJpeg  # type: ignore[no-any-return,unused-ignore]
    return _SporaJpeg


Jpeg: type[ArrayBytesCodec] = _implementation()
register_codec(JPEG_CODEC, Jpeg)


def jpeg_chunk_codecs(config: dict[str, Any]) -> list[Any]:
    """The codecs of one ``(c, y, x)`` chunk holding a JPEG stream of a ``(y, x, c)`` tile."""
    from zarr.codecs import TransposeCodec

    return [TransposeCodec(order=(1, 2, 0)), Jpeg.from_dict({"name": JPEG_CODEC, "configuration": dict(config)})]


def jpeg_config(codec: Any) -> dict[str, Any]:
    """The configuration of a JPEG codec object (either implementation) with bytes values decoded."""
    config = dict(codec.to_dict().get("configuration") or {})
    for key in _TEXT:
        if isinstance(config.get(key), str):
            config[key] = base64.b64decode(config[key].encode())
    return config

"""TIFF, OME-TIFF and slide sources (Aperio SVS, Hamamatsu NDPI, tiled pyramidal TIFF).

One series, a series per channel page, RGB; OME channel names; the pixel size
from OME ``PhysicalSizeX/Y``, Aperio's ``MPP`` or the TIFF resolution tags; a
slide's own reduced levels; its JPEG tiles for the writer to keep as chunks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import process
from ..errors import InvalidInputError
from .base import AxesView, EncodedTiles, ImageSource, SourceInfo, reason

log = logging.getLogger("spora_zarr")

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi")

#: Microns per unit of OME ``PhysicalSize*Unit`` spellings.
_OME_UNITS = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "pm": 1e-6, "Å": 1e-4, "angstrom": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6,
}  # fmt: skip
#: Microns per TIFF ``ResolutionUnit`` (2 inch, 3 centimeter; 4 and 5 as some writers use them).
_RESOLUTION_UNITS = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}
#: A TIFF resolution coarser than this many microns per pixel is a screen's dpi (72, 96, 300), not a microscope's.
_MAX_TAG_MPP = 100.0
#: Compressed segments of a window go to the decoding threads in this many runs per thread (balance against the
#: pool's per-task cost, paid holding the GIL).
_RUNS_PER_WORKER = 4
#: The most bytes of decoded segments kept for one reader's next row of windows (a row of 256 px RGB tiles across a
#: 40,000 px slide: 31 MB).
_KEPT_ROW_BYTES = 64 * 2**20
#: The most bytes of decoded segments kept for all readers together (four such rows).
_KEPT_BYTES = 4 * _KEPT_ROW_BYTES
#: Reader threads counted at most (beyond four rows of the largest size the count changes nothing).
_MAX_READERS = 64
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


class _TiffSegments:
    """Windows of TIFF planes read segment by segment (tiles or strips) straight into the output.

    The fast path behind :class:`TiffSource` for local files whose planes are
    2-D pages (``YX``, or ``YXS`` with the samples contiguous or separate):
    the bytes of each tile or strip overlapping a window are read with
    ``os.pread`` (no shared file position, so no lock), decoded by tifffile's
    own segment decoder and copied once into the window. Compressed segments
    are decoded in a thread pool (the codecs release the GIL); uncompressed
    ones are cheaper to copy inline. Windows may be read from several threads
    at once (the writer's lanes); a window read while another is being read
    decodes its own segments, in its thread. A compressed segment that
    straddles the window's edge is kept (least recently used first out, up to
    one window's bytes and, for each reader, a row of segments across the
    image, at most ``_KEPT_ROW_BYTES``; the readers are the threads that have
    read windows, two at least, and all keep at most ``_KEPT_BYTES``) for the
    windows read next, to its right and in the next row, so shard-aligned
    windows over tiles of another size decode each tile once (with two readers
    at once, a tile both need at the same moment is decoded by each). Other
    layouts use tifffile's zarr view.

    Parameters
    ----------
    tiff
        The open ``tifffile.TiffFile``.
    pages
        The pages in channel order; each contributes its samples as channels.
    workers
        Decoding threads for compressed segments.
    """

    def __init__(self, tiff: Any, pages: list[Any], workers: int) -> None:
        key = pages[0].keyframe
        _, _, self.height, self.width, contig = key.shaped
        self.pages, self.fd = pages, tiff.filehandle.fileno()
        self.separate = key.samplesperpixel if key.planarconfig == 2 else 1
        self.contig = contig
        self.seg_h, self.seg_w = (key.tilelength, key.tilewidth) if key.is_tiled else (min(key.rowsperstrip, self.height), self.width)
        self.rows, self.cols = -(-self.height // self.seg_h), -(-self.width // self.seg_w)
        self.channels = len(pages) * self.separate * self.contig
        self.dtype = np.dtype(key.dtype)
        self._decode = key.decode
        self._jpeg = {"jpegheader": key.jpegheader} if getattr(key, "jpegheader", None) is not None else {}
        self._pool, self._workers = None, workers
        self._compressed = key.compression != 1
        self._kept: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._kept_bytes = 0
        # a row of segments across the image (and a quarter more) for each reader: what a row of windows leaves for
        # the next row
        row = len(pages) * self.separate * self.cols * self.seg_h * self.seg_w * self.contig * self.dtype.itemsize
        self._row_kept = int(min(row * 5 // 4, _KEPT_ROW_BYTES))
        self._lock = threading.Lock()  # the kept segments and the count of windows being read, for concurrent readers
        self._reading = 0
        self._readers: set[int] = set()  # the threads that have read windows (the writer's lanes)
        if self._compressed and workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="spora-decode")

    @classmethod
    def create(cls, tiff: Any, series: list[Any], workers: int) -> _TiffSegments | None:
        """The reader for ``series`` (level 0, in channel order), or ``None`` when their layout needs the zarr view."""
        if not getattr(tiff.filehandle, "is_file", False):
            return None
        try:
            tiff.filehandle.fileno()
        except (OSError, AttributeError, ValueError):
            return None
        pages = []
        for s in series:
            planes = int(np.prod([n for n, axis in zip(s.shape, s.axes) if axis not in "YX"], dtype=np.int64))
            if getattr(s, "transform", None) is not None or len(s.pages) * s.keyframe.samplesperpixel != planes:
                return None
            pages.extend(s.pages)
        if not pages or any(p is None for p in pages):
            return None
        key = pages[0].keyframe
        if (
            any(p.keyframe.hash != key.hash for p in pages)
            or key.imagedepth != 1
            or key.dtype is None
            or key.bitspersample != np.dtype(key.dtype).itemsize * 8
        ):
            return None
        return cls(tiff, pages, workers)

    def read(self, y0: int, y1: int, x0: int, x1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Pixels ``[:, y0:y1, x0:x1]`` of all pages as ``(C, y1 - y0, x1 - x0)``, into ``out`` (any strides) when given."""
        if out is None:
            out = np.empty((self.channels, y1 - y0, x1 - x0), self.dtype)
        jobs = [
            (page, (sample * self.rows + row) * self.cols + col, (number * self.separate + sample) * self.contig)
            for number, page in enumerate(self.pages)
            for sample in range(self.separate)
            for row in range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1)
            for col in range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1)
        ]
        copy = functools.partial(self._copy, out, (y0, y1, x0, x1))
        with self._lock:
            alone = not self._reading  # another thread reading a window too: each decodes its own segments
            self._reading += 1
            if len(self._readers) < _MAX_READERS:
                self._readers.add(threading.get_ident())
            kept = [(job, self._kept.get(job[2:0:-1]) if self._compressed else None) for job in jobs]  # key: (channel, index)
            for job, segment in kept:
                if segment is not None and not self._beyond(job[1], y1, x1):  # no window to the right or below needs it
                    self._kept_bytes -= self._kept.pop(job[2:0:-1]).nbytes
                elif segment is not None:
                    self._kept.move_to_end(job[2:0:-1])
        try:
            jobs = [job for job, segment in kept if segment is None]
            parts, runs = None, self._workers * _RUNS_PER_WORKER  # a few runs per thread, not a task a segment: the pool's
            if self._pool is not None and alone and len(jobs) > 1:  # bookkeeping holds the GIL; decoded while the kept
                parts = self._pool.map(lambda part: [copy(job) for job in part], [jobs[k::runs] for k in range(runs)])
            for job, segment in kept:  # ones are copied here
                if segment is not None:
                    copy(job, segment)
            if parts is None:
                straddling = [copy(job) for job in jobs]
            else:
                straddling = [None] * len(jobs)
                for k, part in enumerate(parts):
                    straddling[k::runs] = part
        finally:
            with self._lock:
                self._reading -= 1
        with self._lock:
            for job, segment in zip(jobs, straddling):
                if segment is not None:
                    self._keep(job[2:0:-1], segment, out.nbytes + self._kept_rows)
        return out

    def _copy(
        self, out: np.ndarray, window: tuple[int, int, int, int], job: tuple[Any, int, int], segment: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Copy the overlap of segment ``index`` of ``page`` with ``window`` into ``out`` from ``channel`` on.

        The segment is decoded unless given; a decoded compressed segment that
        extends beyond the window is returned, to be kept for the next windows.
        """
        (y0, y1, x0, x1), (page, index, channel) = window, job
        sy, sx = self._origin(index)
        ya, yb, xa, xb = max(y0, sy), min(y1, sy + self.seg_h), max(x0, sx), min(x1, sx + self.seg_w)
        target = out[channel : channel + self.contig, ya - y0 : yb - y0, xa - x0 : xb - x0]
        decoded = segment is None
        if segment is None:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if not count:
                target[...] = 0
                return None
            data = os.pread(self.fd, count, offset)
            tables = getattr(page, "jpegtables", None)
            segment = self._decode(data, index, jpegtables=tables, _fullsize=True, **self._jpeg)[0]
        part = segment[0, ya - sy : yb - sy, xa - sx : xb - sx]
        target[...] = part[..., 0] if self.contig == 1 else part.transpose(2, 0, 1)
        straddles = sy < y0 or sx < x0 or self._beyond(index, y1, x1)
        return segment if decoded and self._compressed and straddles else None

    def _origin(self, index: int) -> tuple[int, int]:
        """The top-left pixel ``(y, x)`` of segment ``index`` (of any page or sample) in its plane."""
        row, col = index % (self.rows * self.cols) // self.cols, index % self.cols
        return row * self.seg_h, col * self.seg_w

    def _beyond(self, index: int, y1: int, x1: int) -> bool:
        """Whether segment ``index`` reaches below row ``y1`` or right of column ``x1`` (into windows read later)."""
        sy, sx = self._origin(index)
        return bool(min(sy + self.seg_h, self.height) > y1 or min(sx + self.seg_w, self.width) > x1)

    @property
    def _kept_rows(self) -> int:
        """Bytes of straddling segments kept beside a window's: a row for each reader thread (two at least)."""
        return min(max(2, len(self._readers)) * self._row_kept, _KEPT_BYTES)

    def _keep(self, key: tuple[int, int], segment: np.ndarray, limit: int) -> None:
        """Keep a decoded segment, dropping the least recently used beyond ``limit`` bytes."""
        self._kept[key] = segment
        self._kept_bytes += segment.nbytes
        while self._kept_bytes > limit and self._kept:
            self._kept_bytes -= self._kept.popitem(last=False)[1].nbytes

    def close(self) -> None:
        """Stop the decoding threads (the file belongs to the ``TiffFile``)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _LazyZarrView:
    """tifffile's zarr view of one series level, opened on the first read (its shape is known without it).

    Opening the view costs an event-loop hand-off per page; most windows are
    read by :class:`_TiffSegments` instead, so a small image never needs it.
    """

    def __init__(self, series: Any, level: int) -> None:
        self._series, self._level = series, level
        self.shape = tuple(series.levels[level].shape)
        self._array: Any = None

    def __getitem__(self, index: Any) -> Any:
        if self._array is None:
            import zarr

            self._array = zarr.open(self._series.aszarr(level=self._level), mode="r")
        return self._array[index]


class _TiffFileLog(logging.Filter):
    """What tifffile logs while this thread opens a file, kept instead of printed (a filter on its logger).

    tifffile logs a page chain cut short (a truncated file) as an error and reads on with the pages it found:
    :meth:`check` makes that the file's one-line error, and says its warnings as the file's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()
        logging.getLogger("tifffile").addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        said = getattr(self._local, "said", None)
        if said is None:
            return True
        said.append(record)
        return False

    @contextlib.contextmanager
    def kept(self) -> Iterator[list[logging.LogRecord]]:
        """The records tifffile logs in this thread meanwhile, not printed."""
        said: list[logging.LogRecord] = []
        self._local.said = said
        try:
            yield said
        finally:
            self._local.said = None

    def check(self, name: str, said: list[logging.LogRecord]) -> None:
        """``InvalidInputError`` for an error tifffile logged about ``name``; its warnings logged as ours, naming it."""
        for record in said:
            message = re.sub(r"^<tifffile\.\w+ [^>]*> ", "", record.getMessage())  # its repr of the object, not the file
            if record.levelno >= logging.ERROR:
                raise InvalidInputError(f"{name}: damaged or truncated TIFF ({message})")
            log.warning("%s: %s", name, message)


_TIFFFILE_LOG = _TiffFileLog()


def _channel_pages(name: str, series: Sequence[Any]) -> list[Any]:
    """The channels of a TIFF of one ``YX`` page (series) each: the leading pages of the first's size and dtype.

    Smaller pages after them are previews (a thumbnail a scanner or viewer adds), left out and said so; a page of
    the channels' size that is not one of them (another dtype, after a preview) or a page larger than they are is
    an error: dropping it would drop a channel.
    """
    first = series[0]
    count = next(
        (k for k, s in enumerate(series) if not (s.axes == "YX" and s.shape == first.shape and s.dtype == first.dtype)), len(series)
    )
    rest = series[count:]
    smaller = [s.axes in ("YX", "YXS") and s.shape[0] < first.shape[0] and s.shape[1] < first.shape[1] for s in rest]
    odd = next((count + k for k, small in enumerate(smaller) if not small), None)
    if odd is not None:
        page = series[odd]
        raise InvalidInputError(
            f"{name}: page {odd} is {'x'.join(map(str, page.shape))} {page.dtype}, {'page 0' if count == 1 else f'pages 0-{count - 1}'} "
            f"{'x'.join(map(str, first.shape))} {first.dtype}: one size and dtype for every channel page"
        )
    if rest:
        log.warning("%s: %d channel page(s); %d smaller page(s) after them left out (previews)", name, count, len(rest))
    return list(series[:count])


class TiffSource(ImageSource):
    """A TIFF or OME-TIFF presented as ``(C, H, W)``.

    Channels are the non-spatial axes of the first series (``CYX``, ``SYX``,
    ``YXS`` for RGB) or, when a file holds one ``YX`` series per page (a TIFF
    written one page per channel), the pages in file order. ``level`` opens a
    reduced level of the first series' pyramid (a slide's, an OME-TIFF's
    SubIFDs), ``page`` one page of the file, instead of the full-size image.
    """

    def __init__(self, path: str | os.PathLike[str], fs: Any = None, *, level: int = 0, page: int | None = None) -> None:
        import tifffile

        self.name = os.fspath(path)
        self._fs, self._level, self._page = fs, level, page
        self._handle = fs.open(self.name, "rb") if fs is not None else None
        try:
            with _TIFFFILE_LOG.kept() as said:
                self._tiff = tifffile.TiffFile(self._handle if self._handle is not None else self.name)
                series = self._tiff.series
            _TIFFFILE_LOG.check(self.name, said)
            if not series:
                raise ValueError("no image series")
            first = series[0]
            planes = [first]
            if page is not None:
                one = self._tiff.pages[page]
                first = tifffile.TiffPageSeries([one], one.shape, one.dtype, one.axes)
                planes = [first]
            elif not self._tiff.is_ome and len(series) > 1 and first.axes == "YX":
                planes = _channel_pages(self.name, series)
            if level and (len(planes) > 1 or level >= len(first.levels)):
                raise InvalidInputError(f"{self.name}: no reduced level {level}")
            self._views = [AxesView(_LazyZarrView(s, level), s.axes, self.name) for s in planes]
            self.info = self._read_info(first)
            self._image = first.levels[level]  # the series or level read, for its tiles
            self._segments = _TiffSegments.create(self._tiff, [s.levels[level] for s in planes], process.available_cores())
            if self._segments is not None and self._segments.channels != sum(v.channels for v in self._views):
                self._segments.close()
                self._segments = None
        except InvalidInputError:
            self.close()
            raise
        except Exception as exc:  # tifffile raises many kinds of errors on bad files
            self.close()
            raise InvalidInputError(f"{self.name}: unreadable TIFF ({reason(exc)})") from None
        self.dtype = np.dtype(first.dtype)
        heights = {v.height for v in self._views}
        channels = sum(v.channels for v in self._views)
        if self.info.is_rgb and channels == 4:
            channels = 3  # RGBA: the alpha plane is dropped
        self.shape = (channels, self._views[0].height, self._views[0].width)
        if len(heights) != 1:
            raise InvalidInputError(f"{self.name}: pages have different sizes")

    def _read_info(self, series: Any) -> SourceInfo:
        info = SourceInfo(is_rgb=series.axes.endswith("S") and series.shape[-1] in (3, 4))
        pixel: tuple[float, float] | None = None
        if self._tiff.is_ome and self._tiff.ome_metadata:
            info.channel_names, pixel = _ome_channels_and_pixel_size(self._tiff.ome_metadata)
            if info.is_rgb and info.channel_names is not None and len(info.channel_names) != 3:
                info.channel_names = None  # one OME channel of 3 samples: the colour planes, named red/green/blue by the writer
        page = series.keyframe
        if pixel is None and self._tiff.is_svs:
            mpp = _aperio_mpp(page.description or "")
            pixel = (mpp, mpp) if mpp is not None else None
        if pixel is None:
            pixel = _resolution_tags_mpp(page)
        if pixel is not None:
            if math.isclose(pixel[0], pixel[1], rel_tol=1e-3):
                info.mpp = pixel[1]
            else:
                info.anisotropic = pixel
        return info

    def reduced_levels(self) -> dict[int, ImageSource]:
        """The image's own reduced levels at ``2**k`` of the full size (each to the pixel), by factor.

        The levels of the first series' pyramid and, for a one-page image (a
        slide), the file's other tiled pages of the same kind (an SVS written
        without a thumbnail page, or page by page). Images at other factors
        (thumbnails, label and macro images) are left out: the writer computes
        its levels by halving.
        """
        if self._level or self._page is not None or len(self._views) != 1:
            return {}
        series = self._tiff.series[0]
        _, height, width = self.shape
        found: dict[int, dict[str, int]] = {}

        def consider(where: dict[str, int], shape: tuple[int, ...], axes: str) -> None:
            if axes != series.axes or [n for n, a in zip(shape, axes) if a not in "YX"] != [
                n for n, a in zip(series.shape, axes) if a not in "YX"
            ]:
                return
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            k = round(math.log2(width / w)) if w else 0
            factor = 2**k
            if k >= 1 and factor not in found and abs(w - width / factor) <= 1 and abs(h - height / factor) <= 1:
                found[factor] = where

        for index, level in enumerate(series.levels[1:], start=1):
            consider({"level": index}, level.shape, level.axes)
        if len(series.pages) == 1 and len(self._tiff.pages) <= 64:
            base = series.pages[0]
            for index in range(len(self._tiff.pages)):
                page = self._tiff.pages[index]
                if page is not None and index != getattr(base, "index", -1) and getattr(page, "is_tiled", False):
                    consider({"page": index}, page.shape, page.axes)
        levels: dict[int, ImageSource] = {}
        try:
            for factor, where in sorted(found.items()):
                levels[factor] = TiffSource(self.name, self._fs, **where)
        except BaseException:
            for opened in levels.values():
                opened.close()
            raise
        return levels

    def encoded_tiles(self) -> EncodedTiles | None:
        """The JPEG tiles of a tiled, JPEG-compressed 8-bit RGB image (SVS, generic tiled TIFF); else ``None``.

        NDPI's JPEG (restart intervals of one stream, not tiles) and anything
        else is read as pixels.
        """
        import tifffile

        if len(self._views) != 1:
            return None
        level = self._image
        page = level.keyframe
        if (
            len(level.pages) != 1
            or level.axes != "YXS"
            or not page.is_tiled
            or page.compression != 7
            or page.photometric not in (2, 6)
            or page.samplesperpixel != 3
            or page.planarconfig != 1
            or page.extrasamples
            or page.bitspersample != 8
            or page.imagedepth != 1
            or page.is_ndpi
            or getattr(page, "jpegheader", None) is not None
        ):
            return None
        colorspace, outcolorspace = tifffile.tifffile.jpeg_decode_colorspace(
            page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
        )
        codec: dict[str, Any] = {}
        if page.jpegtables is not None:
            codec["tables"] = bytes(page.jpegtables)
        for key, value in (("colorspace_jpeg", colorspace), ("colorspace_data", outcolorspace)):
            if value is not None:
                codec[key] = _jpeg_colorspace_name(value)
        columns = -(-page.imagewidth // page.tilewidth)
        offsets, counts, handle = page.dataoffsets, page.databytecounts, self._tiff.filehandle
        reading = threading.Lock()  # the writer's lanes call read at once; tifffile's handle.lock is a no-op by default
        fd = self._segments.fd if self._segments is not None else None  # a local file: read at an offset, no lock

        def read(row: int, col: int) -> bytes:
            index = row * columns + col
            if not counts[index]:
                return b""
            if fd is not None:
                data = os.pread(fd, counts[index], offsets[index])
            else:
                with reading:
                    handle.seek(offsets[index])
                    data = bytes(handle.read(counts[index]))
            if len(data) != counts[index]:
                raise InvalidInputError(f"{self.name}: truncated TIFF (tile {row}, {col}: {len(data)} of {counts[index]} bytes)")
            return data

        return EncodedTiles(codec=codec, tile=(page.tilelength, page.tilewidth), read=read)

    @property
    def concurrent_reads(self) -> bool:
        """Whether :meth:`read` may be called from several threads at once: a local file read segment by segment."""
        return self._segments is not None and self._segments.channels == self.shape[0]

    def read(self, y0: int, y1: int, x0: int, x1: int, out: np.ndarray | None = None) -> np.ndarray:
        """The window ``(C, h, w)``; with ``out`` (that shape and dtype) written into it and ``out`` returned."""
        try:
            if self._segments is not None and (out is None or out.shape[0] == self._segments.channels):
                window = self._segments.read(y0, y1, x0, x1, out)
            else:
                parts = [view.read(y0, y1, x0, x1) for view in self._views]
                window = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        except Exception as exc:
            raise InvalidInputError(f"{self.name}: unreadable TIFF data ({reason(exc)})") from None
        if self.info.is_rgb and window.shape[0] == 4:
            window = window[:3]
        if out is not None and window is not out:
            out[...] = window
            return out
        return window

    def close(self) -> None:
        segments = getattr(self, "_segments", None)
        if segments is not None:
            segments.close()
        tiff = getattr(self, "_tiff", None)
        if tiff is not None:
            tiff.close()
        if self._handle is not None:
            self._handle.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("TiffSource holds an open file; pass the path to another process instead")


def _ome_channels_and_pixel_size(xml: str) -> tuple[list[str] | None, tuple[float, float] | None]:
    """Channel names and the (y, x) pixel size in micrometers from OME-XML.

    A channel without a ``Name`` is named by its ``Fluor``, else ``channel_<i>``
    (never its ``ID``, ``Channel:0:0``). A size in a unit not known here is
    no size (the caller asks for ``--mpp``).
    """
    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None, None
    channels = [el for el in pixels if el.tag.endswith("}Channel")]
    names = [(ch.get("Name") or ch.get("Fluor") or "").strip() or f"channel_{i}" for i, ch in enumerate(channels)]
    sizes = {}
    for axis in ("Y", "X"):
        size, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm").strip()
        factor = _OME_UNITS.get(unit, _OME_UNITS.get(unit.lower()))
        try:
            value = float(size) * factor if size is not None and factor else None
        except ValueError:
            value = None
        if value is not None and 0 < value < float("inf"):
            sizes[axis] = value
    if not sizes:
        return (names or None), None
    y, x = sizes.get("Y", sizes.get("X")), sizes.get("X", sizes.get("Y"))
    return (names or None), (float(y), float(x))  # type: ignore[arg-type]


def _aperio_mpp(description: str) -> float | None:
    """Aperio's ``MPP = `` of an ImageDescription, when it is a positive finite number (else the caller asks for ``--mpp``)."""
    found = _APERIO_MPP.search(description)
    try:
        mpp = float(found.group(1)) if found else math.nan
    except ValueError:
        return None
    return mpp if 0 < mpp < math.inf else None


def _resolution_tags_mpp(page: Any) -> tuple[float, float] | None:
    """(y, x) microns per pixel from the TIFF resolution tags, when they have a length unit and a microscope's scale."""
    tags = page.tags
    unit = _RESOLUTION_UNITS.get(int(tags.valueof("ResolutionUnit", 2)))
    values = [tags.valueof(name) for name in ("YResolution", "XResolution")]
    if unit is None or any(v is None for v in values):
        return None
    try:
        per_unit = [v[0] / v[1] if isinstance(v, tuple) else float(v) for v in values]
    except (ZeroDivisionError, TypeError, IndexError):
        return None
    if any(not p > 0 for p in per_unit):
        return None
    mpp = (unit / per_unit[0], unit / per_unit[1])
    return mpp if max(mpp) <= _MAX_TAG_MPP else None


def _jpeg_colorspace_name(value: int | str) -> str:
    """A libjpeg colour space (tifffile passes the photometric number) by its imagecodecs name."""
    import imagecodecs

    return value if isinstance(value, str) else imagecodecs.JPEG8.CS(int(value)).name

"""Write one image or mask as an NGFF 0.5 multiscale group, streaming and crash-safe.

Levels that exist as source files are copied pixel-exact (a JPEG slide's
tiles kept as they are, as the chunks of the level: :mod:`.encoded`); coarser
levels are computed block by block in a depth-first quadtree over shard-sized
blocks, so a block of every level is written exactly once, as a whole shard,
and memory holds one block per level whatever the size of the slide.

A z stack (a source with ``nz > 1``) is written as axes ``c, z, y, x``
(labels ``z, y, x``) with chunks and shards one plane deep, and streamed
plane by plane through the same traversal: levels are downsampled in y and x
only (every level keeps every plane), and memory does not grow with the
number of planes.

One module for the write itself: the layout plan, the traversal and the
staged promotion share one writer's state. What is separable has its own
module: the options and the block and lane sizes they give
(:mod:`.options`), keeping a source's JPEG tiles as chunks (:mod:`.encoded`),
running independent jobs in lanes (:mod:`.lanes`) and the content digests of
the blocks written (:mod:`.digest`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import posixpath
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .. import process
from ..errors import InvalidInputError
from ..sources import ImageSource
from ..store import defaults
from ..store.arrays import new_array
from ..store.location import Location
from ..store.metadata import SporaGroupAttributes, ngff_models, ngff_models_built
from ..store.staging import Staging
from .digest import ContentDigest
from .encoded import encoded_levels, write_encoded
from .lanes import in_lanes
from .ngff import channel_windows, image_metadata, label_metadata
from .options import IN_FLIGHT, WriteOptions, read_plane, source_depth
from .pyramid import SHRINK, Level, Method, check_source_shapes, plan_levels
from .shards import ShardWriter

log = logging.getLogger("spora_zarr")

#: Threads that compress and store blocks. Two writers keep both cores of a small machine busy while
#: zarrs' pool waits in the kernel on page-cache writes.
WRITE_THREADS = 2


#: A copied level read by several lanes at once goes to them in this many bands of block rows per lane (a lane
#: reads its band row by row, and only the tiles on a band's edge are decoded by two lanes).
BANDS_PER_LANE = 4


def _concurrent(source: ImageSource) -> bool:
    """Whether ``source`` may be read from several threads at once (its optional ``concurrent_reads``)."""
    return bool(getattr(source, "concurrent_reads", False))


#: The dtypes the writer stores (zarr v3 core data types): ``(kind, item sizes)``.
STORED_KINDS = {"b": (1,), "u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (2, 4, 8)}


def stored_dtype(dtype: np.dtype, name: str) -> np.dtype:
    """The native zarr dtype a source of ``dtype`` is stored as (bool as uint8), or an ``InvalidInputError``.

    Every writer (convert, add-image, stitch, predict) goes through this, so a
    complex, 128-bit float, string or object image is one line naming the source.
    """
    dtype = np.dtype(dtype)
    if dtype.itemsize not in STORED_KINDS.get(dtype.kind, ()):
        raise InvalidInputError(
            f"{name}: dtype {dtype} is not stored (spora_zarr stores bool, 8- to 64-bit integers and 16- to 64-bit floats)"
        )
    # the canonical native type: tifffile's 'q' (long long) is int64 to numpy but unknown to zarr's registry
    return np.dtype(np.uint8) if dtype.kind == "b" else np.dtype(f"{dtype.kind}{dtype.itemsize}")


@dataclass
class WriteResult:
    """What one write did."""

    path: str
    skipped: bool = False
    levels: list[Level] = field(default_factory=list)
    bytes_read: int = 0


ProgressCallback = Callable[[int], None]


def _z_scale(sources: Mapping[float, ImageSource], z_mpp: float | None) -> float | None:
    """Microns between planes of a stack (``z_mpp``, by default the finest y/x mpp); ``None`` for a 2-D image."""
    first = _first(sources)
    if source_depth(first) == 1:
        return None
    if z_mpp is None:
        return float(min(sources))
    if not (isinstance(z_mpp, (int, float)) and 0 < z_mpp < float("inf")):
        raise InvalidInputError(f"{first.name}: z_mpp must be a positive number of microns between planes, got {z_mpp!r}")
    return float(z_mpp)


def write_image(
    location: Location | str,
    path: str,
    sources: Mapping[float, ImageSource],
    *,
    channel_names: Sequence[str] | None = None,
    rgb: bool = False,
    panel: Sequence[str] | None = None,
    spora: Mapping[str, Any] | None = None,
    options: WriteOptions | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    z_mpp: float | None = None,
    keep_encoded: bool = False,
    files: Mapping[str, bytes] | None = None,
    kept_digests: Mapping[str, str | None] | None = None,
) -> WriteResult:
    """Write an image given its sources per resolution (mpp -> ``(C, H, W)`` source) as a multiscale group.

    The group appears at ``path`` only once complete. Without ``overwrite`` an
    existing complete group is left alone (``skipped``). ``panel`` (the
    modality's channel names in ``channels.parquet`` order) gives each
    channel the colour of its panel position. Sources of a z stack
    (``nz > 1``) give axes ``c, z, y, x`` with ``z_mpp`` microns between
    planes (default: the finest y/x mpp). With ``keep_encoded``, a source
    level that offers its JPEG tiles (:meth:`ImageSource.encoded_tiles`) keeps
    them as its chunks (``imagecodecs_jpeg``, ``docs/store_layout.md``).
    ``files`` (store path -> bytes: the tables and root document that list the
    image) are staged with the group and promoted with it in one step.
    ``kept_digests`` (level name -> digest, ``None``: none recorded) are the
    levels the caller copies unchanged from the group it replaces: they keep
    that group's content digests (:mod:`.digest`) whatever this write's layout,
    so what was computed from them stays valid.
    """
    shape = _first(sources).shape
    z_scale = _z_scale(sources, z_mpp)
    names = list(channel_names) if channel_names is not None else [f"channel_{i}" for i in range(shape[0])]
    if len(names) != shape[0]:
        raise InvalidInputError(f"{_first(sources).name}: {shape[0]} channels but {len(names)} channel names")

    def metadata(levels: list[Level], streamer: _Streamer) -> dict[str, Any]:
        windows = channel_windows(streamer.sample(), np.dtype(_first(sources).dtype), rgb=rgb)
        extra = {
            "kind": "image",
            "channel_names": names,
            "source_levels": [lv.name for lv in levels if lv.from_source],
            **(spora or {}),
            "content_digests": streamer.content_digests(kept_digests or {}),
        }
        attributes = SporaGroupAttributes.from_dict(extra, where=path)
        return image_metadata(
            levels,
            name=display_name(path),
            channel_names=names,
            windows=windows,
            rgb=rgb,
            panel=panel,
            spora=attributes,
            where=path,
            z_mpp=z_scale,
        )

    return _write_multiscale(
        Location.parse(location), path, sources, Method.BIN_SHRINK, metadata, options, overwrite, progress, files, keep_encoded
    )


def write_labels(
    location: Location | str,
    path: str,
    sources: Mapping[float, ImageSource],
    *,
    source_image: str | None = None,
    spora: Mapping[str, Any] | None = None,
    options: WriteOptions | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    z_mpp: float | None = None,
    files: Mapping[str, bytes] | None = None,
) -> WriteResult:
    """Write a mask (one channel of integer labels) as an NGFF label multiscale group.

    A stack gives ``z, y, x``; ``files`` are promoted with the group; both as :func:`write_image`.
    """
    first = _first(sources)
    z_scale = _z_scale(sources, z_mpp)
    if first.shape[0] != 1:
        raise InvalidInputError(f"{first.name}: a mask must have one channel, found {first.shape[0]}")
    if not (np.issubdtype(first.dtype, np.integer) or first.dtype == np.bool_):
        raise InvalidInputError(f"{first.name}: a mask must hold integer labels, found dtype {first.dtype}")

    def metadata(levels: list[Level], streamer: _Streamer) -> dict[str, Any]:
        extra = {
            "kind": "label",
            "source_levels": [lv.name for lv in levels if lv.from_source],
            **(spora or {}),
            "content_digests": streamer.content_digests({}),
        }
        attributes = SporaGroupAttributes.from_dict(extra, where=path)
        source = _label_source(Location.parse(location), path, source_image, levels)
        return label_metadata(
            levels, name=display_name(path), source_image=source, spora=attributes, where=path, z_mpp=z_scale, ids=streamer.value_range
        )

    return _write_multiscale(Location.parse(location), path, sources, Method.MODE, metadata, options, overwrite, progress, files)


def _label_source(location: Location, path: str, source_image: str | None, levels: Sequence[Level]) -> str | None:
    """``source_image``, unless the image it names exists with other levels than the label's.

    NGFF: a label's source image MUST have the label's number of levels; a
    pointer to one that has not is left out rather than written wrong (the
    spora attributes still name the tissue).
    """
    if not source_image:
        return None
    attributes = Staging(location).read_attributes(posixpath.normpath(posixpath.join(path, source_image)))
    ome = (attributes or {}).get("ome")
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if multiscales and [d.get("path") for d in multiscales[0].get("datasets", [])] != [level.name for level in levels]:
        log.info("%s: image-label source %s left out: the image has other levels than the label", path, source_image)
        return None
    return source_image


def display_name(path: str) -> str:
    """Multiscales name of a group, shown by viewers: ``imc/T1``, ``ihc_CD3/T1``, ``cell_masks/T1``."""
    parts = path.strip("/").split("/")
    return "/".join([p for p in parts[:-1] if p not in ("images", "segmentations", "ihc")] + parts[-1:])


def _first(sources: Mapping[float, ImageSource]) -> ImageSource:
    if not sources:
        raise InvalidInputError("no source image given")
    return sources[min(sources)]


def _write_multiscale(
    location: Location,
    path: str,
    sources: Mapping[float, ImageSource],
    method: Method,
    metadata: Callable[[list[Level], _Streamer], dict[str, Any]],
    options: WriteOptions | None,
    overwrite: bool,
    progress: ProgressCallback | None,
    files: Mapping[str, bytes] | None = None,
    keep_encoded: bool = False,
) -> WriteResult:
    options = options or WriteOptions()
    staging = Staging(location)
    staging.discard_for(path)
    if not overwrite and staging.is_complete(path):
        return WriteResult(path, skipped=True)
    ordered = {float(mpp): sources[mpp] for mpp in sorted(sources)}
    dtypes = {np.dtype(s.dtype) for s in ordered.values()}
    if len(dtypes) != 1:
        raise InvalidInputError(f"{_first(ordered).name}: resolutions of one image have different dtypes {sorted(map(str, dtypes))}")
    problem = check_source_shapes({mpp: s.shape for mpp, s in ordered.items()}, _first(ordered).name)
    if problem:
        raise InvalidInputError(problem)
    depths = {mpp: source_depth(s) for mpp, s in ordered.items()}
    depth = depths[min(depths)]
    if len(set(depths.values())) != 1:
        raise InvalidInputError(f"{_first(ordered).name}: resolutions of one stack have different plane counts {depths}")
    levels = plan_levels({mpp: s.shape for mpp, s in ordered.items()}, max_top_size=options.max_top_size)
    labels = method is Method.MODE
    stored = stored_dtype(dtypes.pop(), _first(ordered).name)
    edge = options.block_edge(levels[0].shape[0], stored.itemsize, len(levels) - len(ordered) + 1, _first(ordered).name)
    lanes = options.lanes(levels[0].shape[0], stored.itemsize, len(levels) - len(ordered) + 1, edge)
    if options.shard and edge != options.shard:  # each block still a whole shard: no shard is written twice
        log.info("shards of %d px (default %d) keep memory within %d MiB", edge, options.shard, options.memory_budget // defaults.MiB)
    area = staging.new_area()
    preparing: threading.Thread | None = None
    try:
        with _codec_pipeline(location, options):
            compressors = options.compressors_for(_first(ordered))
            encoded = encoded_levels(list(ordered.values()), stored) if keep_encoded and not labels and depth == 1 else {}
            prefix, shard = f"{area}/{path}", edge if options.shard else None
            made = _create_arrays(location, prefix, levels, stored, options, labels, compressors, depth, shard, set(encoded))
            # a core to spare: the end of the write validates its metadata with ome-zarr-models (0.2-0.5 s to import),
            # imported while the lanes stream (not before: the import holds the GIL, and the steps up to here are
            # serial); the write never returns (or raises) while that import runs
            preparing = _in_background(ngff_models) if lanes > 1 and not ngff_models_built() else None
            digest = ContentDigest()
            for index, tiles in encoded.items():  # the kept levels: their own arrays, their chunks copied
                made[index] = write_encoded(location, f"{prefix}/{levels[index].name}", levels[index], tiles, options, lanes, digest)
            arrays = [made[index] for index in range(len(levels))]
            writers = [ShardWriter.for_array(location, array) for array in arrays]
            streamer = _Streamer(
                levels, arrays, list(ordered.values()), SHRINK[method], edge, labels, progress, depth, set(encoded), lanes, writers, digest
            )
            streamer.run()
        staging.write_group_document(f"{area}/{path}", metadata(levels, streamer))
        for name, data in (files or {}).items():
            staging.stage_file(area, name, data)
        staging.promote(area, path, list(files or {}))
    except BaseException:
        staging.abandon(area)
        raise
    finally:
        if preparing is not None:
            preparing.join()
    return WriteResult(path, levels=levels, bytes_read=streamer.bytes_read)


def _in_background(job: Callable[[], object]) -> threading.Thread:
    """``job`` started in a thread, to be joined; an error is left to the caller's own call of it, which raises it.

    Not a daemon thread: one stopped at the interpreter's exit inside an import of a compiled module (pydantic-core)
    aborts the process ("FATAL: exception not rethrown").
    """

    def run() -> None:
        with contextlib.suppress(Exception):
            job()

    thread = threading.Thread(target=run, name="spora-prepare")
    thread.start()
    return thread


@contextlib.contextmanager
def _codec_pipeline(location: Location, options: WriteOptions) -> Iterator[None]:
    """zarr-python with the zarrs (Rust) codec pipeline for local stores, its own pipeline elsewhere."""
    config: dict[str, Any] = {}
    if location.is_local:
        config["codec_pipeline.path"] = "zarrs.ZarrsCodecPipeline"
        process.note_use("zarrs")  # forked children of this process must not read through zarrs
    if options.codec_threads:
        config["threading.max_workers"] = options.codec_threads
    with zarr.config.set(config):
        yield


def _create_arrays(
    location: Location,
    prefix: str,
    levels: Sequence[Level],
    dtype: np.dtype,
    options: WriteOptions,
    labels: bool,
    compressors: list[BloscCodec],
    depth: int = 1,
    shard: int | None = None,
    kept: Set[int] = frozenset(),
) -> dict[int, zarr.Array[Any]]:
    """An array per level (by index) but the ``kept`` ones (their source's encoded chunks, :func:`write_encoded` makes
    them), sharded by ``shard`` px (``None``: unsharded); a stack (``depth > 1``) gets a ``z`` axis before ``y, x``
    with chunks and shards one plane deep."""
    store = location.zarr_store()
    channels = levels[0].shape[0]
    dims: tuple[str, ...] = ("y", "x") if labels else ("c", "y", "x")
    if depth > 1:
        dims = (*dims[:-2], "z", "y", "x")
    arrays = {}
    for index, level in enumerate(levels):
        if index in kept:
            continue
        spatial: tuple[int, ...] = (options.chunk, options.chunk)
        shards: tuple[int, ...] | None = (shard, shard) if shard else None
        shape: tuple[int, ...] = level.shape[1:] if labels else level.shape
        if depth > 1:
            spatial, shards = (1, *spatial), ((1, *shards) if shards else None)
            shape = (*shape[:-2], depth, *shape[-2:])
        if not labels:
            spatial, shards = (channels, *spatial), ((channels, *shards) if shards else None)
        arrays[index] = new_array(
            location,
            store,
            f"{prefix}/{level.name}",
            shape=shape,
            chunks=spatial,
            shards=shards,
            dtype=dtype,
            fill_value=0,
            compressors=compressors or None,
            dimension_names=dims,
            config={"write_empty_chunks": True},
        )
    return arrays


class _Job(NamedTuple):
    """One lane's job of a plane: at most ``pixels`` source pixels read (the order of the batch), and the job."""

    pixels: int
    run: Callable[[], object]


class _Streamer:
    """Streams the sources through the levels, writing each shard-sized block once (plane by plane for a stack).

    Levels in ``kept`` already hold their source's encoded chunks: they are read
    (to compute the levels below them) but not written. With ``lanes > 1`` the
    independent parts of a plane (the blocks or bands of every copied level,
    the subtrees under the coarsest level's blocks) are streamed by that many
    threads at once, in one batch, the largest first; a source is read by one
    thread at a time (its own decoder may use several), while the reductions
    and the writes of other lanes go on, unless
    it says it may be read from several (``concurrent_reads``: a local tiled
    TIFF): the lanes then read at once, a copied level in bands of block rows.
    ``shard_writers`` (one per level, ``None`` where zarr writes) write the
    blocks of local arrays themselves, a whole shard each (:mod:`.shards`).
    Every block stored is checksummed into ``digest`` (:mod:`.digest`).
    """

    def __init__(
        self,
        levels: list[Level],
        arrays: list[zarr.Array[Any]],
        sources: list[ImageSource],
        shrink: Callable[..., np.ndarray],
        edge: int,
        labels: bool,
        progress: ProgressCallback | None,
        depth: int = 1,
        kept: set[int] | None = None,
        lanes: int = 1,
        shard_writers: Sequence[ShardWriter | None] = (),
        digest: ContentDigest | None = None,
    ) -> None:
        self.levels, self.arrays, self.sources, self.shrink = levels, arrays, sources, shrink
        self.digest = digest or ContentDigest()
        self.shard_writers = list(shard_writers) or [None] * len(arrays)
        self.kept = kept or set()
        self.depth, self.plane = depth, 0
        self.labels, self.progress = labels, progress
        self.edge, self.lanes = edge, lanes
        self.bytes_read = 0
        self.value_range: tuple[int, int] | None = None  # (min, max) of the labels read, for labels
        top = levels[-1].shape
        self._sampled_planes = {int(z) for z in np.linspace(0, depth - 1, min(depth, 16)).round()}
        self._stride = max(1, math.ceil(math.sqrt(top[1] * top[2] * len(self._sampled_planes) / 262_144)))
        self._samples: list[np.ndarray] = []
        self._pool = ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="spora-write")
        self._inflight = threading.BoundedSemaphore(IN_FLIGHT)
        self._pending: list[Future[None]] = []
        # a source is read by one thread at a time, unless it may be read from several (``concurrent_reads``)
        self._reading: list[contextlib.AbstractContextManager[Any]] = [
            contextlib.nullcontext() if _concurrent(source) else threading.Lock() for source in sources
        ]
        self._state = threading.Lock()  # counters, samples, pending writes, progress

    def run(self) -> None:
        try:
            coarsest = len(self.sources) - 1
            for plane in range(self.depth):
                self.plane = plane
                jobs = [job for index in range(coarsest) for job in self._copy_jobs(index)] + self._chain_jobs(coarsest)
                in_lanes([job.run for job in sorted(jobs, key=lambda job: -job.pixels)], self.lanes)
            self._drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def content_digests(self, kept: Mapping[str, str | None]) -> dict[str, str]:
        """Each level's digest of the blocks stored (:mod:`.digest`), once the run is over; a level in ``kept`` (copied
        unchanged from the group replaced) keeps the digest recorded there, or none."""
        shapes = {level.name: array.shape for level, array in zip(self.levels, self.arrays, strict=True)}
        digests = self.digest.hexdigests(shapes, str(self.arrays[0].dtype))
        for level, digest in kept.items():
            if level in digests:
                if digest is None:
                    del digests[level]
                else:
                    digests[level] = digest
        return digests

    def sample(self) -> np.ndarray:
        """A strided sample of the top level (of at most 16 planes of a stack), ``(C, N)``, for contrast windows."""
        if not self._samples:
            return np.zeros((self.levels[0].shape[0], 0))
        return np.concatenate([s.reshape(s.shape[0], -1) for s in self._samples], axis=1)

    # -- reading -------------------------------------------------------------
    def _read(self, index: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        source = self.sources[index]
        with self._reading[index]:
            block = read_plane(source, self.plane, y0, y1, x0, x1)
        expected = (source.shape[0], y1 - y0, x1 - x0)
        if block.shape != expected:
            raise InvalidInputError(f"{source.name}: read a window of shape {block.shape}, expected {expected}")
        if block.dtype == np.bool_:
            block = block.astype(self.arrays[index].dtype)
        found = (int(block.min()), int(block.max())) if self.labels and block.size else None
        with self._state:
            self.bytes_read += block.nbytes
            if found is not None:
                low, high = found
                self.value_range = found if self.value_range is None else (min(low, self.value_range[0]), max(high, self.value_range[1]))
        return block

    # -- writing -------------------------------------------------------------
    def _write(self, index: int, y0: int, x0: int, block: np.ndarray) -> None:
        if block.shape[1] == 0 or block.shape[2] == 0:
            return
        if index == len(self.levels) - 1 and self.plane in self._sampled_planes:
            sample = block[:, :: self._stride, :: self._stride].copy()
            with self._state:
                self._samples.append(sample)
        if index in self.kept:
            return
        region: tuple[int | slice, ...] = (slice(y0, y0 + block.shape[1]), slice(x0, x0 + block.shape[2]))
        if self.depth > 1:
            region = (self.plane, *region)
        target = block[0] if self.labels else block
        self._inflight.acquire()
        future = self._pool.submit(self._store, index, (self.plane, y0, x0), region if self.labels else (slice(None), *region), target)
        with self._state:
            self._pending.append(future)
            self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
            failed = [f.exception() for f in self._pending if f.done() and f.exception() is not None]
            if self.progress and not failed:
                self.progress(block.nbytes)
        if failed:
            raise failed[0]  # type: ignore[misc]

    def _store(self, index: int, position: tuple[int, int, int], region: tuple[int | slice, ...], block: np.ndarray) -> None:
        """Write ``block`` at ``region`` of level ``index``: a whole shard by its :class:`ShardWriter`, else through zarr.

        Its checksum goes into the group's digest at ``position`` (plane, y, x).
        """
        try:
            stored = self.arrays[index].dtype  # a big-endian source's block is checksummed as stored
            self.digest.add(self.levels[index].name, position, block if block.dtype == stored else block.astype(stored))
            writer = self.shard_writers[index]
            if writer is None or not writer.write(region, block):
                self.arrays[index][region] = block
        finally:
            self._inflight.release()

    def _drain(self) -> None:
        for future in self._pending:
            future.result()
        self._pending = []

    # -- the two traversals ---------------------------------------------------
    # The jobs of every level of a plane are independent (copied levels are read from their own sources, the
    # chain from the coarsest source level), so they go to the lanes as one batch, the largest first: no lane
    # waits at the end of a level while the other finishes it, and the small jobs fill the end of the plane.
    def _copy_jobs(self, index: int) -> list[_Job]:
        """A finer source level that nothing is computed from, copied block by block: its jobs."""
        if index in self.kept:
            return []
        _, height, width = self.levels[index].shape

        def copy(y0: int, x0: int) -> None:
            y1, x1 = min(y0 + self.edge, height), min(x0 + self.edge, width)
            self._write(index, y0, x0, self._read(index, y0, y1, x0, x1))

        def copy_rows(rows: range) -> None:
            for y0 in rows:
                for x0 in range(0, width, self.edge):
                    copy(y0, x0)

        rows, bands = range(0, height, self.edge), BANDS_PER_LANE * self.lanes
        if _concurrent(self.sources[index]) and len(rows) >= 2 * bands:  # bands of rows: the lanes read at once and
            per_band = math.ceil(len(rows) / bands)  # share only the tiles on the bands' edges
            return [
                _Job(len(band) * self.edge * width, functools.partial(copy_rows, band))
                for band in (rows[k : k + per_band] for k in range(0, len(rows), per_band))
            ]
        # block by block (a source read by one lane at a time, or a level of few rows)
        return [_Job(self.edge * self.edge, functools.partial(copy, y0, x0)) for y0 in rows for x0 in range(0, width, self.edge)]

    def _chain_jobs(self, base: int) -> list[_Job]:
        """The coarsest source level and the levels computed from it, depth first: a job per subtree."""
        top = len(self.levels) - 1 - base
        span = self.edge * 2**top
        _, height, width = self.levels[base].shape
        rows, cols = math.ceil(height / span), math.ceil(width / span)
        return [_Job(span * span, functools.partial(self._produce, base, top, i, j)) for i in range(rows) for j in range(cols)]

    def _produce(self, base: int, depth: int, i: int, j: int) -> np.ndarray:
        """Block ``(i, j)`` of level ``base + depth``, computed from its four children and written."""
        index = base + depth
        _, height, width = self.levels[index].shape
        y0, x0 = i * self.edge, j * self.edge
        y1, x1 = max(y0, min(y0 + self.edge, height)), max(x0, min(x0 + self.edge, width))
        if depth == 0:
            block = self._read(index, y0, y1, x0, x1) if y1 > y0 and x1 > x0 else self._empty(index, y1 - y0, x1 - x0)
        else:
            block = self._empty(index, y1 - y0, x1 - x0)
            half = self.edge // 2
            child_level = self.levels[index - 1].shape
            for di in (0, 1):
                for dj in (0, 1):
                    ci, cj = 2 * i + di, 2 * j + dj
                    if ci * self.edge >= child_level[1] or cj * self.edge >= child_level[2]:
                        continue
                    child = self._produce(base, depth - 1, ci, cj)
                    y, x = di * half, dj * half
                    self.shrink(child, out=block[:, y : y + child.shape[1] // 2, x : x + child.shape[2] // 2])
        self._write(index, y0, x0, block)
        return block

    def _empty(self, index: int, height: int, width: int) -> np.ndarray:
        return np.empty((self.levels[index].shape[0], height, width), dtype=self.arrays[index].dtype)

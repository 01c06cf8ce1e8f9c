"""Deep checks of a cohort store (``spora-zarr validate --deep``): every shard decodes, the tables and masks match the images.

The tile and standardization tables must have been computed from the masks
and images stored now: each records the content digest of the level it was
computed from (:mod:`spora_zarr.write.digest`); a table written before the
digests were recorded is not checked.

Every level array is read shard by shard (one shard in memory at a time)
through a read engine: the direct engine for local arrays in the converter's
layout (its compiled loop decodes the chunks of a shard on several threads),
zarr-python's own pipeline otherwise. Both report a damaged shard (too short
for its index, an index checksum that does not match, an index pointing past
the end of the file, a chunk that does not decode to its size) as a
:class:`~spora_zarr.errors.StoreError`, one line per shard.

A missing shard file, or a chunk a shard index marks as absent, reads as the
fill value, and zarr leaves out shards and chunks that hold only the fill
value; so does the spora writer on local stores (the zarrs pipeline skips them,
``write_empty_chunks`` notwithstanding). So
a missing one is reported only where the pyramid proves it held data: the next
level is computed from this one (it is not a source level), and its pixels
over the missing region are not all fill value (2 x 2 means and modes of fill
values are fill values).
"""

from __future__ import annotations

import itertools
import math
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

from ..errors import SporaZarrError, StoreError
from ..store.layout import MASK_KINDS, STANDARDIZATION_META_KEY, TISSUES_TABLE
from ..store.location import Location, open_local_file
from ..store.tables import standardization_digests, table_record
from .cohort import Cohort
from .engines import REGISTRY, Engine, UnsupportedLayout
from .engines.shards import MISSING, index_at_end, shard_table
from .engines.zarr import open_array

__all__ = ["deep_problems"]

Region = tuple[slice, ...]


def deep_problems(cohort: Cohort) -> list[str]:
    """Every problem the deep checks find, one line each naming the table, group, array or shard file."""
    problems = _table_problems(cohort) + _result_problems(cohort)
    images = [(m, t, False) for m in cohort.modalities for t in cohort.tissues(m)]
    masks = [(k, t, True) for k in cohort.known_mask_kinds for t in cohort.mask_tissues(k)]
    for kind, tissue_id, _ in masks:
        problems += [f"{cohort.mask_group_path(kind, tissue_id)}: {p}" for p in _guarded(_mask_levels_match, cohort, kind, tissue_id)]
    for name, tissue_id, mask in images + masks:
        try:
            problems += group_data_problems(cohort, name, tissue_id, mask=mask)
        except Exception as exc:  # a broken group must be reported, not stop the validation
            path = cohort.mask_group_path(name, tissue_id) if mask else cohort.group_path(name, tissue_id)
            problems.append(f"{path}: cannot be checked: {_first_line(exc)}")
    return problems


def _guarded(check: Any, *args: Any) -> list[str]:
    """Run one check; a group or table too broken to check is itself a problem."""
    try:
        return list(check(*args))
    except Exception as exc:  # a broken group must be reported, not stop the validation
        return [f"cannot be checked: {_first_line(exc)}"]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- tables ---------------------------------------------------------------------------


def _table_problems(cohort: Cohort) -> list[str]:
    """Tissues of ``metadata/tissues.parquet`` without an image, and ``channels_per_tissue`` rows without one."""
    images = {m: set(cohort.tissues(m)) for m in cohort.modalities}
    problems = []
    tables = cohort.tables()
    if TISSUES_TABLE in tables:
        imaged = set().union(*images.values())
        found = _guarded(_column_values, cohort, TISSUES_TABLE, "tissue_id")
        for tissue_id in dict.fromkeys(found):
            if tissue_id not in imaged:
                problems.append(f"{TISSUES_TABLE}: tissue {tissue_id!r} has no image in any modality")
    for rel in tables:
        if posixpath.basename(rel) == "channels_per_tissue.parquet":
            problems += [f"{rel}: {p}" for p in _guarded(_channels_match_images, cohort, rel, images)]
    return problems


def _column_values(cohort: Cohort, rel: str, column: str) -> list[str]:
    table = cohort.read_table(rel)
    if column not in table.column_names:
        raise StoreError(f"no {column!r} column (columns: {', '.join(table.column_names)})")
    return [str(v) for v in table.column(column).to_pylist()]


def _channels_match_images(cohort: Cohort, rel: str, images: dict[str, set[str]]) -> list[str]:
    """Rows of ``<modality>/channels_per_tissue.parquet`` for tissues without an image there, or channels it lacks."""
    modality = posixpath.dirname(rel)
    tissues, channels = _column_values(cohort, rel, "tissue_id"), _column_values(cohort, rel, "channel_name")
    listed: dict[str, list[str]] = {}
    for tissue_id, channel in zip(tissues, channels, strict=True):
        listed.setdefault(tissue_id, []).append(channel)
    problems = []
    for tissue_id, names in listed.items():
        if tissue_id not in images.get(modality, ()):
            problems.append(f"tissue {tissue_id!r} has no {modality} image ({len(names)} channel row(s))")
            continue
        stored = cohort.channel_names(modality, tissue_id)
        for name in names:
            if name not in stored:
                image = cohort.group_path(modality, tissue_id)
                problems.append(f"tissue {tissue_id!r} lists channel {name!r}, which {image} does not have (it has {', '.join(stored)})")
    return problems


def _result_problems(cohort: Cohort) -> list[str]:
    """Tile and standardization tables computed from a mask or an image level replaced since (another content digest)."""
    problems = []
    for rel in cohort.tables():
        if rel.startswith("tiling/") and rel.endswith("_tile_stats.parquet"):
            problems += [f"{rel}: {p}" for p in _guarded(_tiles_match_masks, cohort, rel)]
        elif posixpath.basename(rel) == "stats.parquet" and "/standardization/" in rel:
            problems += [f"{rel}: {p}" for p in _guarded(_statistics_match_images, cohort, rel)]
    return problems


def _tiles_match_masks(cohort: Cohort, rel: str) -> list[str]:
    """Rows of a tile stats table whose tissue mask is not the one tiled (``mask_digest``)."""
    table = cohort.read_table(rel)
    if "mask_digest" not in table.column_names:
        return []  # written before the digests were recorded
    recorded: dict[str, dict[str, str | None]] = {}  # resolution -> tissue -> digest
    columns = (table.column(name).to_pylist() for name in ("tissue_id", "resolution", "mask_digest"))
    for tissue_id, resolution, digest in zip(*columns, strict=True):
        recorded.setdefault(resolution, {})[tissue_id] = digest
    problems = []
    for resolution, digests in recorded.items():
        changed, missing = cohort.changed_since(MASK_KINDS[0], resolution, digests)
        problems += [f"tissue {tissue_id!r} has no {MASK_KINDS[0]} mask" for tissue_id in missing]
        problems += [f"tissue {t!r} was tiled from a tissue mask replaced since; run the same `spora-zarr tile` again" for t in changed]
    return problems


def _statistics_match_images(cohort: Cohort, rel: str) -> list[str]:
    """Tissues of a standardization ``stats.parquet`` whose image (or mask) is not the one measured."""
    record = table_record(cohort.location, rel, STANDARDIZATION_META_KEY)
    modality, resolution, digests = record.get("modality"), str(record.get("resolution")), standardization_digests(record)
    if not isinstance(modality, str) or not digests:
        return []  # written before the digests were recorded
    problems = []
    for name, which, what in ((modality, 0, "an image"), (MASK_KINDS[0], 1, "a tissue mask")):
        if which and not record.get("within_mask"):
            continue
        changed, missing = cohort.changed_since(name, resolution, {t: d[which] for t, d in digests.items()})
        problems += [f"tissue {tissue_id!r} has no {name} group" for tissue_id in missing]
        problems += [f"tissue {t!r} was measured on {what} replaced since; run the same `spora-zarr standardize` again" for t in changed]
    return problems


# -- masks ----------------------------------------------------------------------------


def _mask_levels_match(cohort: Cohort, kind: str, tissue_id: str) -> list[str]:
    """A mask's levels against its image's: those of its ``image-label`` source image (NGFF: the source has the
    label's levels); without a source, levels of one image of the tissue (the writer leaves the source out for a mask
    at fewer resolutions than its image: a mask at 1.0 mpp of an H&E image at 0.5 and 1.0 mpp)."""
    names = cohort.mask_resolutions(kind, tissue_id)
    path = cohort.mask_group_path(kind, tissue_id)
    label = cohort.mask_metadata(kind, tissue_id).to_attributes()["ome"].get("image-label") or {}
    source = (label.get("source") or {}).get("image")
    imaged = [m for m in cohort.modalities if cohort.has_tissue(m, tissue_id)]
    levels = {cohort.group_path(m, tissue_id): cohort.resolutions(m, tissue_id) for m in imaged}
    if source:
        target = posixpath.normpath(posixpath.join(path, source))
        if target not in levels:
            return [f"its image-label source {source} ({target}) is not an image of the store"]
        if levels[target] == names:
            return []
        return [
            f"levels {', '.join(names)} are not the levels of its image-label source {target} ({', '.join(levels[target])}), "
            "as NGFF requires (a resolution added to the image later does not rewrite its masks: add the mask again "
            "with --overwrite)"
        ]
    if not levels:
        return [f"tissue {tissue_id!r} has no image in any modality"]
    if any(set(names) <= set(image_levels) for image_levels in levels.values()):
        return []
    image, image_levels = next(iter(levels.items()))
    return [f"levels {', '.join(names)} are not levels of {image} ({', '.join(image_levels)}) or of any other image of the tissue"]


# -- pixels ---------------------------------------------------------------------------


def group_data_problems(cohort: Cohort, modality: str, tissue_id: str, *, mask: bool = False) -> list[str]:
    """Damaged or missing shards of every level of one image group (with ``mask``: mask group), each line naming its array or shard file."""
    metadata = cohort.mask_metadata(modality, tissue_id) if mask else cohort.group_metadata(modality, tissue_id)
    group = cohort.mask_group_path(modality, tissue_id) if mask else cohort.group_path(modality, tissue_id)
    problems: list[str] = []
    previous: _LevelCheck | None = None
    for name in metadata.level_names:
        try:
            level = _LevelCheck(cohort, f"{group}/{name}", name)
        except Exception as exc:  # a level that cannot be opened is reported; the others are still read
            problems.append(f"{group}/{name}: cannot be checked: {_first_line(exc)}")
            previous = None
            continue
        problems += level.run()
        if previous is not None and name not in metadata.spora.source_levels:
            problems += previous.missing_with_data(level)
        previous = level
    return problems


@dataclass
class _Missing:
    """A region of an array that reads as fill value because its shard file or chunk is absent."""

    key: str
    what: str
    region: Region


class _LevelCheck:
    """Read every shard of one level array once; collect damaged shards and absent regions."""

    def __init__(self, cohort: Cohort, path: str, name: str) -> None:
        self.location, self.path, self.name = cohort.location, path, name
        self.meta = open_array(self.location, path)
        metadata = self.meta.metadata
        self.shape = tuple(int(s) for s in metadata.shape)
        self.file_shape = tuple(int(s) for s in metadata.chunk_grid.chunk_shape)  # type: ignore[attr-defined,union-attr,unused-ignore]
        self.fill = np.asarray(metadata.fill_value, dtype=self.meta.dtype)
        self.engine = _engine(self.location, path, self.meta)
        codecs = tuple(metadata.codecs)  # type: ignore[union-attr]
        sharding = codecs[0] if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else None
        self.chunk_shape = tuple(int(s) for s in sharding.chunk_shape) if sharding else self.file_shape
        index = tuple(sharding.index_codecs) if sharding else ()
        checked_index = len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
        self.index_at_end = sharding is not None and index_at_end(sharding)
        self.reads_index = self.location.is_local and checked_index  # shard_table reads local files
        self.missing: list[_Missing] = []

    def run(self) -> list[str]:
        """Problems of this array's shard files, one line each."""
        encode = self.meta.metadata.chunk_key_encoding.encode_chunk_key  # type: ignore[union-attr]
        present = self._files()
        problems = []
        grid = [math.ceil(s / f) for s, f in zip(self.shape, self.file_shape, strict=True)]
        for shard in itertools.product(*map(range, grid)):
            key = encode(shard)
            region = self._region(shard, self.file_shape)
            if key not in present and not self._is_local_entry(key):  # a folder in place of a shard is damage, not absence
                self.missing.append(_Missing(key, "shard file is missing", region))
                continue
            try:
                if self.reads_index:
                    self._absent_chunks(key, shard)
                self.engine.read(region)
            except (StoreError, OSError) as exc:
                problems.append(f"{self.path}/{key}: {self._relative(str(exc), key)}")
        return problems

    def missing_with_data(self, coarser: _LevelCheck) -> list[str]:
        """Absent regions of this level whose pixels at ``coarser`` (computed from this level) are not fill value.

        The footprint of the absent parts of one shard is read once.
        """
        problems = []
        for key, group in itertools.groupby(self.missing, key=lambda gap: gap.key):
            gaps = list(group)
            box = tuple(slice(min(g.region[a].start for g in gaps), max(g.region[a].stop for g in gaps)) for a in range(len(self.shape)))
            window = _footprint(box, coarser.shape)
            if any(s.stop <= s.start for s in window):
                continue
            try:
                pixels = coarser.engine.read(window)
            except StoreError:
                continue  # that shard is reported as damaged already
            for gap in gaps:
                footprint = _footprint(gap.region, coarser.shape)
                part = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(footprint, window, strict=True))
                if all(s.stop > s.start for s in part) and np.any(pixels[part] != coarser.fill):
                    problems.append(f"{self.path}/{key}: {gap.what}, but level {coarser.name}, computed from it, has data there")
        return problems

    def _files(self) -> set[str]:
        """Keys of the files below the array's directory."""
        fs = self.location.fs()
        directory = self.location.fs_path(self.path)
        try:
            found = fs.find(directory)
        except (FileNotFoundError, OSError):
            return set()
        base = directory.strip("/")
        paths = (p.strip("/") for p in found)  # memory:// lists "/x/..." for "x"
        return {p[len(base) + 1 :] for p in paths if p.startswith(base + "/")}

    def _is_local_entry(self, key: str) -> bool:
        return self.location.is_local and os.path.lexists(self.location.fs_path(self.path, key))

    def _absent_chunks(self, key: str, shard: tuple[int, ...]) -> None:
        """Check the shard's index (raises ``StoreError``) and note the chunks inside the array it marks absent."""
        where = self.location.fs_path(self.path, key)
        per_shard = [f // c for f, c in zip(self.file_shape, self.chunk_shape, strict=True)]
        fd = open_local_file(where)  # without blocking: a FIFO in place of a shard is a StoreError, never a hang
        if fd is None:
            raise StoreError("shard file is missing")
        try:
            table = shard_table(where, fd, os.fstat(fd), math.prod(per_shard), self.index_at_end)
        finally:
            os.close(fd)
        offsets = table.entries[::2].reshape(per_shard)
        for inner in zip(*np.nonzero(offsets == MISSING), strict=True):
            chunk = tuple(s * p + int(i) for s, p, i in zip(shard, per_shard, inner, strict=True))
            region = self._region(chunk, self.chunk_shape)
            if all(r.start < r.stop for r in region):
                self.missing.append(_Missing(key, f"chunk {list(chunk)} is absent from the shard index", region))

    def _region(self, index: tuple[int, ...], block: tuple[int, ...]) -> Region:
        return tuple(slice(min(i * b, n), min((i + 1) * b, n)) for i, b, n in zip(index, block, self.shape, strict=True))

    def _relative(self, message: str, key: str) -> str:
        """An engine's message without the shard file's or array's own path in front."""
        shard = f"{self.path}/{key}"
        for prefix in (self.location.fs_path(shard), self.location.join(shard), f"array {self.location.join(self.path)}", shard):
            message = message.replace(f"shard {prefix}: ", "").replace(f"{prefix}: ", "").replace(f" {prefix} ", " ")
        return message


def _footprint(region: Region, coarser: tuple[int, ...]) -> Region:
    """The pixels of the next level computed from ``region`` alone: y and x halved (2 x 2 blocks), other axes kept."""
    *rest, y, x = region
    return (*rest, *(slice(s.start // 2, min(s.stop // 2, n)) for s, n in zip((y, x), coarser[-2:], strict=True)))


def _engine(location: Location, path: str, meta: zarr.Array[Any]) -> Engine:
    """The direct engine for a local array in the converter's layout, zarr-python's own pipeline for any other."""
    for name in ("direct", "zarr") if location.is_local else ("zarr",):
        try:
            return REGISTRY[name].open(location, path, meta)
        except UnsupportedLayout:
            continue
    raise SporaZarrError(f"no read engine reads {location.join(path)}")

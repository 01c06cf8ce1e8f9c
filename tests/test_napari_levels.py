"""The lazy levels handed to napari: numpy semantics for every index napari and users give, shards read once."""

from __future__ import annotations

import numpy as np
import pytest

from spora_zarr.napari.levels import LazyLevel, WindowCache
from spora_zarr.read.levels import open_level
from spora_zarr.store.location import Location
from spora_zarr.testing.engines import SHARD, ArraySpec, write_array


class CountingReader:
    """A real level reader that counts the windows it is asked for."""

    def __init__(self, location: Location, path: str) -> None:
        self.inner = open_level(location, path)
        self.shape, self.dtype, self.windows = self.inner.shape, self.inner.dtype, []

    @property
    def engine(self) -> str:
        return self.inner.engine

    def read(self, y0: int, x0: int, height: int, width: int, channels: object = None) -> np.ndarray:
        self.windows.append((y0, x0, height, width))
        return self.inner.read(y0, x0, height, width)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Location, np.ndarray, np.ndarray]:
    """A (5, 2.5 shards, 1.7 shards) uint16 image and a 2-D uint32 mask in a real store."""
    location = Location.parse(tmp_path_factory.mktemp("levels") / "s.zarr")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 60_000, (5, 2 * SHARD + SHARD // 2, SHARD + 7 * SHARD // 10), dtype=np.uint16)
    mask = rng.integers(0, 2**32 - 1, image.shape[1:], dtype=np.uint32)
    write_array(location, "img", image, ArraySpec("uint16"))
    write_array(location, "mask", mask, ArraySpec("uint32", ndim=2))
    return location, image, mask


def _keys(shape: tuple[int, ...]) -> list[object]:
    ny, nx = shape[-2:]
    spatial = [
        (slice(None), slice(None)),
        (slice(10, SHARD + 20), slice(SHARD - 5, nx)),
        (slice(None, None, 7), slice(3, -3, 5)),
        (slice(ny - 1, 2, -3), slice(None, None, -1)),
        (5, slice(100, 200)),
        (slice(0, 50), -1),
        (-ny, nx - 1),
        (slice(30, 30), slice(None)),
    ]
    if len(shape) == 2:
        return [*spatial, Ellipsis, (Ellipsis, 3)]
    return [
        *[(c, *s) for c in (0, -1, slice(1, 4), [4, 0, 2]) for s in spatial],
        Ellipsis,
        (Ellipsis, slice(0, 9)),
        (2, Ellipsis, 7),
    ]


def test_every_index_equals_numpy(stored: tuple[Location, np.ndarray, np.ndarray]) -> None:
    location, image, mask = stored
    for path, data in (("img", image), ("mask", mask)):
        level = LazyLevel(open_level(location, path), (SHARD, SHARD), cache=WindowCache(2**30))
        assert level.shape == data.shape and level.dtype == data.dtype and level.ndim == data.ndim
        for key in _keys(data.shape):
            got = np.asarray(level[key])
            np.testing.assert_array_equal(got, data[key], err_msg=f"{path}[{key}]")
        np.testing.assert_array_equal(np.asarray(level), data)


def test_channel_selections_stay_lazy_and_compose(stored: tuple[Location, np.ndarray, np.ndarray]) -> None:
    location, image, _ = stored
    reader = CountingReader(location, "img")
    level = LazyLevel(reader, (SHARD, SHARD), cache=WindowCache(2**30))  # type: ignore[arg-type]
    subset = level[[4, 0, 2]]
    one = subset[1]
    assert isinstance(subset, LazyLevel) and subset.shape == (3, *image.shape[1:])
    assert isinstance(one, LazyLevel) and one.shape == image.shape[1:] and not reader.windows
    np.testing.assert_array_equal(one[SHARD - 3 : SHARD + 4, 7:20], image[0, SHARD - 3 : SHARD + 4, 7:20])
    np.testing.assert_array_equal(subset[-1, ::3, 5], image[2, ::3, 5])
    np.testing.assert_array_equal(level[1:3][1, :, :10], image[2, :, :10])  # a slice of channels reads at once


def test_rgb_levels_put_channels_last(stored: tuple[Location, np.ndarray, np.ndarray]) -> None:
    location, image, _ = stored
    level = LazyLevel(open_level(location, "img"), (SHARD, SHARD), rgb=True, cache=WindowCache(2**30))
    moved = np.moveaxis(image, 0, -1)
    assert level.shape == moved.shape
    for key in [(slice(None), slice(None)), (slice(5, SHARD + 9), slice(None, None, 4), slice(0, 3)), (slice(1, 9), 4, 1), Ellipsis]:
        np.testing.assert_array_equal(level[key], moved[key], err_msg=str(key))


def test_channel_layers_decode_each_shard_once(stored: tuple[Location, np.ndarray, np.ndarray]) -> None:
    """napari slices each channel's layer: the shards hold every channel, so they are decoded once, not per channel."""
    location, image, _ = stored
    reader = CountingReader(location, "img")
    level = LazyLevel(reader, (SHARD, SHARD), cache=WindowCache(2**30))  # type: ignore[arg-type]
    for c in range(image.shape[0]):
        np.testing.assert_array_equal(np.asarray(level[c][:, :]), image[c])
    assert len(reader.windows) == 3 * 2  # the 3 x 2 shards of the level, each once
    assert len(set(reader.windows)) == len(reader.windows)


def test_the_cache_drops_the_least_recently_used_beyond_its_bound() -> None:
    cache = WindowCache(max_bytes=3 * 800)
    loads: list[int] = []

    def load(i: int) -> np.ndarray:
        loads.append(i)
        return np.full(100, i, np.float64)  # 800 bytes

    for i in (0, 1, 2, 0, 3, 0, 1):  # 3 evicts 1 (0 was used again); 1 is then read again
        assert cache.get((0, i, 0), lambda i=i: load(i))[0] == i  # type: ignore[misc]
    assert loads == [0, 1, 2, 3, 1]
    with pytest.raises(ValueError):
        cache.get((0, 0, 0), lambda: load(9))[0] = 5  # cached windows are shared: read-only


def test_bad_indexes_are_index_errors(stored: tuple[Location, np.ndarray, np.ndarray]) -> None:
    location, image, _ = stored
    level = LazyLevel(open_level(location, "img"), (SHARD, SHARD))
    for key in [(0, image.shape[1]), (0, 0, 0, 0), (0, np.newaxis), (0, [1, 2], 0), 9]:
        with pytest.raises(IndexError):
            np.asarray(level[key])

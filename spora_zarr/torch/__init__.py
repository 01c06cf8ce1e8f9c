"""The PyTorch adapter: :class:`TileDataset` over the tile tables, :class:`TileLoader` to batch it.

:mod:`spora_zarr.torch.tiles` indexes tiles and reads them through the
datasets' fast tile path; :mod:`spora_zarr.torch.loader` hands batches from
``DataLoader`` workers to the training process in reused shared memory;
:mod:`spora_zarr.torch.workers` sets the workers up for both (the loader does not import the tile dataset).
"""

from .loader import SharedBatches, TileLoader
from .tiles import TileDataset
from .workers import available_cores, worker_init_fn

__all__ = ["SharedBatches", "TileDataset", "TileLoader", "available_cores", "worker_init_fn"]

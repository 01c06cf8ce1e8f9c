"""Process-wide settings, applied by the processes spora_zarr starts, never as a side effect of a library call.

The CLI (:func:`spora_zarr.cli.main`), the runner's worker processes
(:mod:`spora_zarr.run.runner`) and PyTorch ``DataLoader`` workers
(:func:`spora_zarr.torch.worker_init_fn`, through
:func:`spora_zarr.limit_codec_threads`) call these; a program that uses the
library in its own process decides for itself.
"""

from __future__ import annotations

import ctypes
import functools
import os

__all__ = ["bound_allocator", "configure_writer_process", "keep_freed_batches"]


def _mallopt(mmap_threshold: int, trim_threshold: int, arena_max: int | None = None) -> None:
    """Set glibc's malloc thresholds (bytes) and, if given, its arena count; no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    libc.mallopt(m_mmap_threshold, mmap_threshold)
    libc.mallopt(m_trim_threshold, trim_threshold)
    if arena_max is not None:
        libc.mallopt(m_arena_max, arena_max)


@functools.cache
def bound_allocator() -> None:
    """Keep glibc from hoarding freed block buffers: two arenas, a fixed mmap threshold, 16 MiB of free heap kept.

    By default every codec thread gets its own malloc arena and the mmap
    threshold grows after large frees, so shard-sized buffers stay resident;
    measured here this doubles the peak RSS of a conversion. Buffers up to
    16 MiB (a block of three 2048² planes is 12 MiB) come from the heap and
    are reused: mapping each afresh (a 1 MiB threshold) faulted in 3.8
    million pages converting one 40,000² slide, a fifth to a quarter of its
    time, for about 18 MiB less peak RSS (``docs/conversion.md``). No-op off glibc.
    """
    _mallopt(16 << 20, 16 << 20, arena_max=2)


def keep_freed_batches() -> None:
    """In a ``DataLoader`` worker: let glibc reuse a batch's freed tile buffers for the next batch.

    A worker holds a batch of tiles (2.4 MB each at 24 x 224 x 224 uint16)
    until collation, then frees them all; by default glibc gives the freed
    top of its heap back to the OS and the next batch faults every page in
    again, which costs a worker about a quarter of its CPU time on the 2-core
    development machine (``docs/standardization.md``). Buffers up to 32 MiB
    (glibc's largest mmap threshold on 64-bit systems) come from the heap and
    up to 256 MiB of freed heap stays. No-op off glibc.
    """
    _mallopt(32 << 20, 256 << 20)


def configure_writer_process(codec_threads: int | None = None) -> None:
    """Set up a process that converts: bounded allocator and, if given, codec threads per pool.

    ``codec_threads`` goes to ``RAYON_NUM_THREADS`` (zarrs) and
    ``BLOSC_NTHREADS`` unless the environment already sets them; call it
    before the first conversion in the process.
    """
    bound_allocator()
    if codec_threads:
        os.environ.setdefault("RAYON_NUM_THREADS", str(codec_threads))
        os.environ.setdefault("BLOSC_NTHREADS", str(codec_threads))

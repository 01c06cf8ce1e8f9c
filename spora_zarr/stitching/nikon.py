"""Nikon nd2 acquisitions as tiles: one tile per XY position (first timepoint), offsets from the stage positions.

Positions come from the experiment's ``XYPosLoop`` points (``stagePositionUm``);
they are converted to output pixels through the inverse of the frame's
``pixelToStageTransformationMatrix`` when the file records one (so a stage
axis running against the camera's is handled), else divided by the pixel size,
and shifted so the smallest offset is 0. Pixels are read frame by frame when a
window asks for them (:class:`~spora_zarr.stitching.readers.Nd2Reader`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from ..errors import InvalidInputError, NotFoundError
from ..sources.base import reason
from .readers import nd2_frame_layout

__all__ = ["Nd2Tiles", "nd2_tiles", "position_frames", "stage_to_offsets"]


@dataclass
class Nd2Tiles:
    """What a tileset needs from an nd2 file: per position its frames (one per z) and offset, the shared geometry."""

    frames: list[list[int]]
    offsets: np.ndarray
    channels: int
    size: tuple[int, int, int]
    dtype: np.dtype
    voxel_size: tuple[float, float, float]


def position_frames(experiment: Sequence[Any], path: str = "<nd2>") -> list[list[int]]:
    """Frame (sequence) indices per XY position, one per z plane, at the first timepoint of an nd2 ``experiment``."""
    axes = {"XYPosLoop": "P", "ZStackLoop": "Z", "TimeLoop": "T", "NETimeLoop": "T"}
    if any(loop.type not in axes for loop in experiment):
        raise InvalidInputError(f"{path}: experiment loops {[loop.type for loop in experiment]} are not read as tiles")
    names = [axes[loop.type] for loop in experiment]
    indices = (dict(zip(names, combo)) for combo in product(*(range(loop.count) for loop in experiment)))  # frame order
    positions: dict[int, list[int]] = {}
    for frame, index in enumerate(indices):
        if index.get("T", 0) == 0:
            positions.setdefault(index.get("P", 0), []).append(frame)
    return [positions[p] for p in sorted(positions)]


def stage_to_offsets(stage_um: np.ndarray, voxel_size: Sequence[float], pixel_to_stage: Sequence[float] | None = None) -> np.ndarray:
    """``(N, 3)`` stage positions ``(x, y, z)`` in microns -> offsets ``(x, y, z)`` in pixels, the smallest 0 along each axis.

    ``pixel_to_stage`` is the 2 x 3 row-major matrix an nd2 frame records; its
    2 x 2 part (with signs) maps pixel steps to stage microns. Without it, x and
    y are divided by the pixel size. z is divided by the z step.
    """
    stage = np.asarray(stage_um, dtype=float).reshape(-1, 3)
    vx, vy, vz = (float(v) for v in voxel_size)
    matrix = np.array([[vx, 0.0], [0.0, vy]])
    if pixel_to_stage is not None and len(pixel_to_stage) == 6:
        given = np.reshape(np.asarray(pixel_to_stage, dtype=float), (2, 3))[:, :2]
        if abs(np.linalg.det(given)) > 1e-12:
            matrix = given
    xy = np.linalg.solve(matrix, stage[:, :2].T).T
    z = stage[:, 2] / vz if vz > 0 else np.zeros(len(stage))
    offsets = np.column_stack([xy, z])
    return offsets - offsets.min(axis=0) if len(offsets) else offsets


def nd2_tiles(filename: str | os.PathLike[str], ndim: int) -> Nd2Tiles:
    """The positions of an nd2 file as tiles (metadata only; no pixel is read)."""
    try:
        import nd2
    except ImportError:
        raise InvalidInputError(f"{os.fspath(filename)}: reading nd2 needs the nd2 package: pip install 'spora-zarr[stitch]'") from None
    path = os.fspath(filename)
    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: nd2 file not found")
    try:
        with nd2.ND2File(path) as handle:
            experiment = list(handle.experiment)
            channels, height, width, components = nd2_frame_layout(handle)
            dtype, voxel = np.dtype(handle.dtype), tuple(float(v) for v in handle.voxel_size())
            frames = position_frames(experiment, path)
            points = next((loop.parameters.points for loop in experiment if loop.type == "XYPosLoop"), None)
            if points is not None:
                stage = np.array([tuple(p.stagePositionUm) for p in points], dtype=float)
            else:  # a single position: offset 0
                stage = np.zeros((len(frames), 3))
            matrix = _pixel_to_stage(handle)
    except (InvalidInputError, NotFoundError):
        raise
    except Exception as exc:
        raise InvalidInputError(f"{path}: unreadable nd2 ({reason(exc)})") from None
    if len(stage) != len(frames):
        raise InvalidInputError(f"{path}: {len(stage)} stage positions for {len(frames)} XY positions")
    depth = len(frames[0])
    if ndim == 2 and depth != 1:
        raise InvalidInputError(f"{path}: {depth} z planes per position; read it with Tileset(ndim=3)")
    offsets = stage_to_offsets(stage, voxel, matrix)
    if ndim == 2:
        offsets[:, 2] = 0
    return Nd2Tiles(frames, offsets, channels * components, (depth, height, width), dtype, voxel)  # type: ignore[arg-type]


def _pixel_to_stage(handle: Any) -> Sequence[float] | None:
    """The first channel's ``pixelToStageTransformationMatrix``, when the file records one."""
    try:
        matrix: Sequence[float] | None = handle.metadata.channels[0].volume.pixelToStageTransformationMatrix
        return matrix
    except (AttributeError, IndexError, TypeError):
        return None

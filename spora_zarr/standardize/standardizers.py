"""The standardizers spora users know: ``build_standardizer`` and the ``BaseStandardizer`` classes.

A standardizer is a callable ``(image, tissue_id, channel_names) -> image``
taking a ``(C, H, W)`` tensor of stored values and returning float32. The
stats-backed ones apply, per channel,
``x -> (f(clip(x, 0, upper)) - mean) / std`` with ``f`` the identity
(``quantile_clipping``) or ``log1p`` (``quantile_clipping_log1p``) and
``upper, mean, std`` the rows of the spec's ``stats.parquet`` for that tissue
and channel (:mod:`.statistics`). :class:`BatchStandardizer` applies the same
transform to ``(B, C, H, W)`` batches on any device (the fast training path:
uint16 items through the DataLoader, standardized on the GPU).

One module, although long: its one job is turning a spec into the transform
(the classes, :func:`build_standardizer`, the compiled per-tissue transform and
its batch form, and :class:`PixelsCheck`, which refuses statistics of pixels
replaced since); what a transform is built from lives elsewhere (the spec
grammar in :mod:`.specs`, the statistics in :mod:`.statistics`, the compiled
kernels in :mod:`.kernels`, the filters in :mod:`.filters`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..access.resolution import ResolutionLike, parse_resolution
from ..errors import InvalidInputError, NotFoundError, StoreError
from ..store.layout import MASK_KINDS
from . import kernels
from .specs import IDENTITY, Spec, parse_spec

if TYPE_CHECKING:
    import pandas as pd

    from ..access.tissue import TissueSource

__all__ = [
    "MEAN_STD",
    "BaseStandardizer",
    "BatchStandardizer",
    "IdentityStandardizer",
    "CompiledTransform",
    "MeanStdStandardizer",
    "QuantileClippingLog1PStandardizer",
    "QuantileClippingStandardizer",
    "StatsBackedStandardizer",
    "apply_standardizer",
    "build_standardizer",
]

MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "hibou": ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)),
}

ChannelParameters = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]


_LUT_TYPES: dict[torch.dtype, np.dtype] = {torch.uint8: np.dtype(np.uint8), torch.uint16: np.dtype(np.uint16)}  # kernels.LUT_DTYPES


def _unsigned(tensor: torch.Tensor) -> bool:
    return tensor.dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool)


def _transform_(
    out: torch.Tensor, lower: torch.Tensor | None, upper: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, log1p: bool
) -> torch.Tensor:
    """``f(clip(out, lower, upper)) * scale + bias`` in place on float32 ``out`` (parameters broadcast per channel).

    The one element-wise form of the transform: the standardizers apply it to
    tiles and batches, and :class:`CompiledTransform` to every possible sample value.
    ``lower`` is None for samples of unsigned types (>= 0 already).
    """
    if lower is not None:
        torch.maximum(out, lower, out=out)
    torch.minimum(out, upper, out=out)  # minimum/maximum with (C, 1, 1) bounds: 5x faster than clamp_ with tensors
    if log1p:
        out.log1p_()
    return out.mul_(scale).add_(bias)


def _lut_type(tensor: torch.Tensor) -> np.dtype | None:
    """The sample type when ``tensor`` can go through :class:`CompiledTransform` here (CPU, 8/16-bit unsigned, kernels built)."""
    dtype = _LUT_TYPES.get(tensor.dtype)
    return dtype if dtype is not None and tensor.device.type == "cpu" and kernels.available() else None


class CompiledTransform:
    """The transform of 8/16-bit unsigned samples per channel in one compiled pass (``_kernels.c``).

    Without ``log1p``: ``min(x, upper_c) * scale_c + bias_c`` in float32, the
    element-wise path's operations in its order (vectorised by the compiler),
    so the result equals it bit for bit. With ``log1p``: one gather through
    per-channel float32 lookup tables; channel ``c``'s holds the transform of
    ``v = 0 .. floor(upper_c) + 1`` (every value of the dtype when the bound is
    beyond it), computed by the element-wise transform itself on those values,
    so a sample equals the element-wise result within the float32 rounding of
    torch's vectorised and scalar ``log1p`` (one ulp); a larger sample takes the
    last entry, the transform of ``upper_c``. A table is ``4 x (upper + 2)``
    bytes, at most 256 KiB (uint16).

    Parameters
    ----------
    upper, scale, bias : torch.Tensor
        float32 per channel (any shape with ``C`` elements).
    log1p : bool
        The transform takes ``log1p`` after clipping.
    dtype : numpy.dtype
        uint8 or uint16.
    """

    def __init__(self, upper: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, log1p: bool, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.log1p = bool(log1p)
        upper, scale, bias = (t.detach().to("cpu", torch.float32).reshape(-1, 1) for t in (upper, scale, bias))
        self.channels = upper.shape[0]
        self.upper, self.scale, self.bias = (np.ascontiguousarray(t.numpy().reshape(-1)) for t in (upper, scale, bias))
        if self.log1p:
            top = int(np.iinfo(self.dtype).max)
            finite = np.nan_to_num(np.clip(self.upper.astype(np.float64), 0, top), nan=top)
            self.lengths = np.minimum(np.floor(finite).astype(np.int64) + 2, top + 1)
            values = torch.arange(int(self.lengths.max()), dtype=torch.float32).expand(self.channels, -1).contiguous()
            rows = _transform_(values, None, upper, scale, bias, log1p=True).numpy()
            self.table = np.concatenate([row[:n] for row, n in zip(rows, self.lengths)])
            self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def apply(self, image: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` (``(C, ...)``, this dtype, on the CPU) standardized into float32 ``out`` (new if None)."""
        if image.shape[0] != self.channels or _LUT_TYPES.get(image.dtype) != self.dtype:
            raise InvalidInputError(
                f"a transform of {self.channels} {self.dtype} channels cannot map a {image.dtype} image of shape {tuple(image.shape)}"
            )
        image = image.contiguous()
        if out is None:
            out = torch.empty(image.shape, dtype=torch.float32)
        planes, plane_n = self.channels, image[0].numel()
        if self.log1p:
            kernels.lut_apply(image.data_ptr(), self.dtype, planes, plane_n, self.table, self.offsets, self.lengths, out.data_ptr())
        else:
            kernels.affine_apply(image.data_ptr(), self.dtype, planes, plane_n, self.upper, self.scale, self.bias, out.data_ptr())
        return out


class BaseStandardizer:
    """A standardization: ``(image (C, H, W), tissue_id, channel_names) -> float32 image``."""

    spec: str = ""

    def __call__(self, image: torch.Tensor, tissue_id: str, channel_names: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def channel_parameters(self, tissue_id: str, channel_names: Sequence[str]) -> ChannelParameters:
        """``(lower, upper, mean, std, log1p)`` per channel, for :class:`BatchStandardizer` (per-channel affine ones only)."""
        raise InvalidInputError(f"{type(self).__name__} has no per-channel parameters for a batch standardizer")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def apply_standardizer(
    standardizer: Callable[[torch.Tensor, str, Sequence[str]], Any], image: torch.Tensor, tissue_id: str, channel_names: Sequence[str]
) -> torch.Tensor:
    """``standardizer(image, tissue_id, channel_names)``, checked: a numpy array becomes a tensor, anything else is an error.

    A user's callable that forgets its ``return`` (``None``) is an
    ``InvalidInputError`` naming it and the tissue, not a failure later in collate.
    """
    result = standardizer(image, tissue_id, channel_names)
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, np.ndarray) and result.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(result))
    name = standardizer if isinstance(standardizer, BaseStandardizer) else getattr(standardizer, "__qualname__", None) or standardizer
    raise InvalidInputError(
        f"standardizer {name}: returned {type(result).__name__} for tissue {tissue_id!r}; it must return the standardized image tensor"
    )


class IdentityStandardizer(BaseStandardizer):
    """The ``identity`` spec: values unchanged, as float32."""

    spec = IDENTITY

    def __call__(self, image: torch.Tensor, tissue_id: str, channel_names: Sequence[str]) -> torch.Tensor:
        return image.to(torch.float32)

    def channel_parameters(self, tissue_id: str, channel_names: Sequence[str]) -> ChannelParameters:
        n = len(channel_names)
        return np.full(n, -np.inf), np.full(n, np.inf), np.zeros(n), np.ones(n), False


class MeanStdStandardizer(BaseStandardizer):
    """RGB (H&E, IHC) normalisation: ``(x / 255 - mean) / std`` with a ``mean_std_type`` preset.

    Parameters
    ----------
    mean_std_type : str
        ``"imagenet"`` (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225) or
        ``"hibou"`` (mean 0.7068, 0.5755, 0.722; std 0.195, 0.2316, 0.1816).
    """

    def __init__(self, mean_std_type: str = "imagenet") -> None:
        if mean_std_type not in MEAN_STD:
            raise InvalidInputError(f"mean_std_type must be one of {', '.join(MEAN_STD)}, got {mean_std_type!r}")
        self.spec = self.mean_std_type = mean_std_type
        mean, std = MEAN_STD[mean_std_type]
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: torch.Tensor, tissue_id: str = "", channel_names: Sequence[str] = ()) -> torch.Tensor:
        return (image.to(torch.float32) / 255.0 - self._mean) / self._std


class StatsBackedStandardizer(BaseStandardizer):
    """Per tissue and channel clipping and standardization from a spec's ``stats.parquet``.

    Parameters
    ----------
    stats : pandas.DataFrame
        Columns ``tissue_id, channel_name, upper, mean, std`` (``quantile`` is informative).
    spec : str or Spec
        The spec the statistics belong to (names the transform: ``log1p`` or not).
    source : str
        Where the statistics come from, for error messages (the command that computes them).
    pixels : PixelsCheck, optional
        Checks, on a tissue's first use, that its image (and mask) are still those the statistics were
        computed from (:meth:`from_store` with a dataset's cohort); a ``StoreError`` naming the table otherwise.
    """

    log1p: bool = False

    def __init__(self, stats: pd.DataFrame, spec: str | Spec, *, source: str = "", pixels: PixelsCheck | None = None) -> None:
        parsed = spec if isinstance(spec, Spec) else parse_spec(spec)
        self.spec = parsed.name
        self.log1p = parsed.log1p
        self.source = source
        self.pixels = pixels
        missing = {"tissue_id", "channel_name", "upper", "mean", "std"} - set(stats.columns)
        if missing:
            raise InvalidInputError(f"statistics of {self.spec} lack columns {', '.join(sorted(missing))}")
        self._rows: dict[tuple[str, str], tuple[float, float, float]] = {
            (str(t), str(c)): (float(u), float(m), float(s))
            for t, c, u, m, s in zip(stats.tissue_id, stats.channel_name, stats.upper, stats["mean"], stats["std"])
        }
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._transforms: dict[tuple[str, tuple[str, ...], np.dtype], CompiledTransform] = {}

    @classmethod
    def from_store(
        cls,
        store: Any,
        modality: str,
        resolution: ResolutionLike,
        spec: str,
        storage_options: dict[str, Any] | None = None,
        *,
        cohort: Any = None,
    ) -> StatsBackedStandardizer:
        """The standardizer of ``spec`` from a store's ``stats.parquet`` (``NotFoundError`` listing the specs there).

        With the store's ``cohort`` (a dataset's), each tissue's image and mask are checked on first use against
        the ones the statistics were computed from (:class:`PixelsCheck`).
        """
        from ..store.location import Location
        from .statistics import command_hint, statistics_digests, statistics_table, stats_path

        parsed = parse_spec(spec)
        table = statistics_table(store, modality, resolution, parsed.name, storage_options)  # the rows and the footer: one read
        stats = table.to_pandas()
        kind = QuantileClippingLog1PStandardizer if parsed.log1p else QuantileClippingStandardizer
        path = stats_path(modality, resolution, parsed.name)
        within_mask, recorded = statistics_digests(table, Location.parse(store, storage_options).join(path))
        hint = command_hint(store, modality, resolution, parsed.name, within_mask=within_mask)
        pixels = None
        if cohort is not None and recorded:
            pixels = PixelsCheck(cohort, modality, parse_resolution(resolution).name, within_mask, recorded, path, hint)
        return kind(stats, parsed, source=hint, pixels=pixels)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}, "_transforms": {}}

    @property
    def tissues(self) -> list[str]:
        """Tissues the statistics cover."""
        return sorted({t for t, _ in self._rows})

    def channel_parameters(self, tissue_id: str, channel_names: Sequence[str]) -> ChannelParameters:
        """``(lower, upper, mean, std, log1p)`` arrays over ``channel_names``; ``NotFoundError`` naming missing rows.

        ``StoreError`` when the tissue's image or mask was replaced since the statistics were computed (``pixels``).
        """
        if self.pixels is not None:
            self.pixels.check(str(tissue_id))
        rows = [self._rows.get((str(tissue_id), str(name))) for name in channel_names]
        missing = [name for name, row in zip(channel_names, rows) if row is None]
        if missing:
            hint = f"; recompute them with: {self.source}" if self.source else ""
            covered = "covers no channel of it" if all(t != tissue_id for t, _ in self._rows) else "lacks them"
            raise NotFoundError(
                f"no {self.spec} statistics for channel(s) {', '.join(missing)} of tissue {tissue_id!r} "
                f"(the table {covered}; {len(self.tissues)} tissues covered){hint}"
            )
        values = np.array([row for row in rows if row is not None], dtype=np.float64).reshape(-1, 3)
        std = values[:, 2].copy()
        std[~(std > 0)] = 1.0  # a constant channel: centred, not scaled
        return np.zeros(len(values)), values[:, 0], values[:, 1], std, self.log1p

    def _tensors(self, tissue_id: str, channel_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (str(tissue_id), tuple(channel_names))
        cached = self._cache.get(key)
        if cached is None:
            lower, upper, mean, std, _ = self.channel_parameters(tissue_id, channel_names)

            def column(values: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(values.astype(np.float32)).view(-1, 1, 1)

            cached = column(lower), column(upper), column(1.0 / std), column(-mean / std)  # x * scale + bias
            self._cache[key] = cached
        return cached

    def __call__(self, image: torch.Tensor, tissue_id: str, channel_names: Sequence[str]) -> torch.Tensor:
        if image.shape[0] != len(channel_names):
            raise InvalidInputError(f"image has {image.shape[0]} channels but {len(channel_names)} channel names were given")
        dtype = _lut_type(image)
        if dtype is not None:  # stored counts: one compiled pass
            key = (str(tissue_id), tuple(channel_names), dtype)
            transform = self._transforms.get(key)
            if transform is None:
                _, upper, scale, bias = self._tensors(tissue_id, channel_names)
                transform = self._transforms[key] = CompiledTransform(upper, scale, bias, self.log1p, dtype)
            return transform.apply(image)
        lower, upper, scale, bias = self._tensors(tissue_id, channel_names)
        return _transform_(image.to(torch.float32, copy=True), None if _unsigned(image) else lower, upper, scale, bias, self.log1p)


class PixelsCheck:
    """Whether the images (and masks) a statistics table was computed from are still those of the cohort.

    ``recorded`` maps each tissue to the content digests of its image and mask at ``resolution`` the table
    records (:func:`~spora_zarr.standardize.statistics.statistics_digests`). Every tissue's is compared, once,
    on the first use of any: the means and standard deviations are over the cohort (and a ``_global``
    bound too), so one tissue's new pixels make the table stale for all of them.
    """

    def __init__(
        self, cohort: Any, modality: str, resolution: str, within_mask: bool, recorded: dict[str, tuple[Any, Any]], table: str, hint: str
    ) -> None:
        self.cohort, self.modality, self.resolution, self.within_mask = cohort, modality, resolution, within_mask
        self.recorded, self.table, self.hint = recorded, table, hint
        self._replaced: list[str] | None = None

    def check(self, tissue_id: str) -> None:
        """``StoreError`` naming the table and the tissues whose image or mask is not the one measured, if any."""
        if self._replaced is None:
            self._replaced = self._find_replaced()
        if self._replaced:
            shown = ", ".join(map(repr, self._replaced[:5])) + (f" and {len(self._replaced) - 5} more" if len(self._replaced) > 5 else "")
            raise StoreError(
                f"{self.cohort.location.join(self.table)}: measured on pixels replaced since (tissue {shown}), so stale for every "
                f"tissue (its means and deviations are over the cohort); recompute the statistics with: {self.hint}"
            )

    def _find_replaced(self) -> list[str]:
        kinds = [(self.modality, 0)] + ([(MASK_KINDS[0], 1)] if self.within_mask else [])  # a tissue no longer there is not read
        changed = {t for name, which in kinds for t in self.cohort.changed_since(name, self.resolution, self._recorded(which))[0]}
        return [t for t in self.recorded if t in changed]

    def _recorded(self, which: int) -> dict[str, Any]:
        return {tissue_id: digests[which] for tissue_id, digests in self.recorded.items()}


class QuantileClippingStandardizer(StatsBackedStandardizer):
    """``quantile_clipping/uq_<q>_<image|global>``: ``(clip(x, 0, upper) - mean) / std``."""

    log1p = False


class QuantileClippingLog1PStandardizer(StatsBackedStandardizer):
    """``quantile_clipping_log1p/uq_<q>_<image|global>``: ``(log1p(clip(x, 0, upper)) - mean) / std``."""

    log1p = True


def build_standardizer(
    spec: str | BaseStandardizer,
    source: Any = None,
    *,
    modality: str | None = None,
    resolution: ResolutionLike | None = None,
    storage_options: dict[str, Any] | None = None,
) -> BaseStandardizer:
    """Resolve a spec to its standardizer.

    Parameters
    ----------
    spec : str or BaseStandardizer
        ``identity``; ``imagenet``/``hibou`` (RGB mean/std presets);
        ``quantile_clipping/uq_<q>_<image|global>`` or
        ``quantile_clipping_log1p/uq_<q>_<image|global>``. A standardizer is
        returned as is.
    source : dataset, Cohort, str or Location, optional
        Where stats-backed specs read their statistics: a multiplex dataset
        (its store, modality and resolution) or a store with ``modality`` and
        ``resolution``.
    modality, resolution
        For a store ``source``.

    Raises
    ------
    InvalidInputError
        An unknown or malformed spec, or a stats-backed spec without a source.
    NotFoundError
        The spec's statistics are not in the store (the message lists those
        present and the command that computes them).
    """
    if isinstance(spec, BaseStandardizer):
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"standardization must be a spec name or a BaseStandardizer, got {type(spec).__name__}")
    if spec == IDENTITY:
        return IdentityStandardizer()
    if spec in MEAN_STD:
        return MeanStdStandardizer(spec)
    parsed = parse_spec(spec)
    cohort = getattr(source, "cohort", None)
    if cohort is not None:  # a dataset
        store, modality = cohort.location, modality or source.modality_dir()
        resolution = resolution if resolution is not None else source.resolution
    else:
        store = getattr(source, "location", source)
    if store is None or modality is None or resolution is None:
        raise InvalidInputError(
            f"standardization {parsed.name!r} reads statistics from a store: pass a dataset, or a store with modality and resolution"
        )
    name = parse_resolution(resolution).name
    return StatsBackedStandardizer.from_store(store, modality, name, parsed.name, storage_options, cohort=cohort)


class TileSet(Protocol):
    """What :meth:`BatchStandardizer.for_tiles` needs of a tile dataset (``spora_zarr.torch.TileDataset`` is one)."""

    kind: str
    panels: dict[str, list[str]]

    def sources(self, modality: str) -> list[tuple[str, TissueSource]]:
        """Each tissue with the source its ``modality`` is read from."""
        ...


class BatchStandardizer(torch.nn.Module):
    """A per-channel standardizer for ``(B, C, H, W)`` batches of stored values, on any device.

    The parameters of every tissue are tables (buffers) indexed on the device, so
    a batch mixing tissues is one gather and three element-wise operations; on
    the CPU, uint8/uint16 items go through :class:`CompiledTransform` instead.
    Channels a tissue did not measure (zeros in :class:`~spora_zarr.torch.TileDataset`
    items) stay zero.

    Parameters
    ----------
    standardizer : BaseStandardizer
        Identity or stats-backed.
    tissue_ids : sequence of str
        The tissues batches may hold; position ``i`` is tissue index ``i``.
    panel : sequence of str
        Channel names of the ``C`` planes, in order.
    channels : mapping of str to sequence of str, optional
        The channels each tissue measured (default: the whole panel).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        standardizer: BaseStandardizer,
        tissue_ids: Sequence[str],
        panel: Sequence[str],
        channels: dict[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        self.tissue_ids = [str(t) for t in tissue_ids]
        self.panel = [str(c) for c in panel]
        self._index = {t: i for i, t in enumerate(self.tissue_ids)}
        lower = np.zeros((len(self.tissue_ids), len(self.panel)))
        upper = np.zeros_like(lower)
        mean = np.zeros_like(lower)
        std = np.ones_like(upper)
        logs = set()
        position = {c: p for p, c in enumerate(self.panel)}
        for i, tissue in enumerate(self.tissue_ids):
            names = [c for c in (channels or {}).get(tissue, self.panel) if c in position]
            if not names:
                continue
            lo, u, m, s, log1p = standardizer.channel_parameters(tissue, names)
            where = [position[c] for c in names]
            lower[i, where], upper[i, where], mean[i, where], std[i, where] = lo, u, m, s
            logs.add(log1p)
        self.log1p = logs == {True}
        self.register_buffer("lower", torch.from_numpy(lower.astype(np.float32)))
        self.register_buffer("upper", torch.from_numpy(upper.astype(np.float32)))
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))
        self.register_buffer("scale", torch.from_numpy((1.0 / std).astype(np.float32)))
        self.register_buffer("bias", torch.from_numpy((-mean / std).astype(np.float32)))
        self._transforms: dict[tuple[int, np.dtype], CompiledTransform] = {}
        self._transforms_stamp: tuple[tuple[int, int], ...] = ()

    @classmethod
    def for_tiles(cls, tiles: TileSet, modality: str) -> BatchStandardizer:
        """The batch standardizer of a ``TileDataset``'s multiplex ``modality`` (its datasets' standardization).

        Build the TileDataset with ``preprocess=False`` (uint16 items) and call
        ``module(batch[modality], batch["tissue_id"])`` on the device.
        """
        panel = tiles.panels.get(modality)
        if panel is None:
            raise InvalidInputError(f"the TileDataset has no multiplex modality {modality!r}; it has {', '.join(tiles.panels) or 'none'}")
        standardizers: dict[str, BaseStandardizer] = {}
        measured: dict[str, Sequence[str]] = {}
        for tissue, source in tiles.sources(modality):
            standardizer = source.preprocessor
            if not isinstance(standardizer, BaseStandardizer):
                raise InvalidInputError(
                    f"{source.name}: a BatchStandardizer needs a standardization spec (a BaseStandardizer), "
                    f"the dataset has {standardizer!r}"
                )
            standardizers[tissue] = standardizer
            measured[tissue] = source.channel_names(tissue, tiles.kind)
        kinds = {id(s) for s in standardizers.values()}
        if len(kinds) > 1:
            raise InvalidInputError("the TileDataset's datasets use different standardizers; build one BatchStandardizer per dataset")
        standardizer = next(iter(standardizers.values()))
        return cls(standardizer, list(standardizers), panel, measured)

    def indices(self, tissues: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Row indices of ``tissues`` (names, or already indices)."""
        if isinstance(tissues, torch.Tensor):
            return tissues.to(device=self.upper.device, dtype=torch.long)
        try:
            rows = [self._index[str(t)] for t in tissues]
        except KeyError as exc:
            raise NotFoundError(f"the batch standardizer has no parameters for tissue {exc.args[0]!r}") from None
        return torch.tensor(rows, dtype=torch.long, device=self.upper.device)

    def forward(self, batch: torch.Tensor, tissues: Sequence[str] | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Standardize ``batch`` (``(B, C, H, W)``, any numeric dtype) of the tissues ``tissues`` (B names or indices).

        ``out``: a float32 tensor of the batch's shape on the module's device to
        write into (and return), e.g. one reused across batches: on the CPU a
        fresh output of a large batch costs more in page faults than the
        transform itself (``docs/standardization.md``).
        """
        if batch.ndim != 4 or batch.shape[1] != len(self.panel):
            raise InvalidInputError(f"expected a (B, {len(self.panel)}, H, W) batch, got shape {tuple(batch.shape)}")
        device = self.upper.device
        if out is not None and (out.shape != batch.shape or out.dtype != torch.float32 or out.device != device or not out.is_contiguous()):
            raise InvalidInputError(
                f"out must be a contiguous float32 tensor of shape {tuple(batch.shape)} on {device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
        rows = self.indices(tissues)
        dtype = _lut_type(batch) if device.type == "cpu" else None
        if dtype is not None:  # stored counts on the CPU: one compiled pass per item with its tissue's parameters
            batch = batch.contiguous()
            out = torch.empty(batch.shape, dtype=torch.float32) if out is None else out
            jobs = [(self._compiled(row, dtype), batch[item], out[item]) for item, row in enumerate(rows.tolist())]
            # The compiled pass releases the GIL: items on torch's intra-op thread count.
            with ThreadPoolExecutor(max(1, min(len(jobs), torch.get_num_threads())), thread_name_prefix="spora-standardize") as pool:
                list(pool.map(lambda job: job[0].apply(job[1], job[2]), jobs))
            return out
        if out is None:
            out = batch.to(device=device).to(torch.float32)
            if out.data_ptr() == batch.data_ptr():  # already float32 there: never modify the caller's batch
                out = out.clone()
        elif out.data_ptr() != batch.data_ptr():
            out.copy_(batch)
        lower = None if _unsigned(batch) else self.lower[rows][:, :, None, None]
        per_item = (self.upper[rows][:, :, None, None], self.scale[rows][:, :, None, None], self.bias[rows][:, :, None, None])
        return _transform_(out, lower, *per_item, self.log1p)

    def _compiled(self, row: int, dtype: np.dtype) -> CompiledTransform:
        """Tissue ``row``'s compiled transform for samples of ``dtype``, built on first use and again after the buffers change."""
        # torch counts in-place changes of a tensor in _version and has no public name for it
        stamp = tuple((t.data_ptr(), t._version) for t in (self.upper, self.scale, self.bias))  # noqa: SLF001
        if stamp != self._transforms_stamp:
            self._transforms, self._transforms_stamp = {}, stamp
        transform = self._transforms.get((row, dtype))
        if transform is None:
            parameters = (self.upper[row], self.scale[row], self.bias[row])
            transform = self._transforms[(row, dtype)] = CompiledTransform(*parameters, self.log1p, dtype)
        return transform

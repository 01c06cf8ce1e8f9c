"""Typed metadata of a cohort store, parsed once and written from these objects.

- :class:`CohortAttributes` is the root group's ``spora`` attribute: the store
  format version, the modalities with their level names, the mask kinds.
  :func:`update_cohort_attributes` is the one writer of the root document: it
  merges what a run adds into what is there, never rebuilds it from one run.
- :class:`GroupMetadata` is an image or label group: its NGFF 0.5 ``ome``
  attribute, validated by ``ome-zarr-models`` (``ImageAttrs`` or
  ``ImageLabelAttrs``; ``omero`` rides along as an extra field), seen through
  its levels and channels, and its ``spora`` attribute
  (:class:`SporaGroupAttributes`).

The level arrays' ``zarr.json`` documents have their own module,
:mod:`spora_zarr.store.arrays` (the bounded reader, its limits, ``ArrayLayout``).

A store whose ``format_version`` is newer than :data:`FORMAT_VERSION` is a
:class:`~spora_zarr.errors.StoreError` on open: its layout may differ in ways
this version would misread.

Still one module for the root and group documents: each writer's output is
checked by the parser beside it, and both parse the ``spora`` attributes with the
same checks.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import posixpath
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import process
from ..access.resolution import parse_resolution
from ..errors import InvalidInputError, StoreError
from .layout import FORMAT_VERSION, validate_modality, validate_name
from .location import Location
from .staging import ZARR_JSON, Staging, group_document

if TYPE_CHECKING:
    pass

__all__ = [
    "ChannelMetadata",
    "CohortAttributes",
    "GroupMetadata",
    "LevelMetadata",
    "SporaGroupAttributes",
    "check_format_version",
    "check_not_foreign_root",
    "is_cohort_store",
    "ngff_kind",
    "read_cohort_attributes",
    "update_cohort_attributes",
    "validate_ngff",
]


def check_format_version(version: object, where: str) -> str:
    """``version`` as text if this version of spora_zarr reads it; else a ``StoreError``."""
    text = str(version)
    try:
        number = int(text)
    except ValueError:
        raise StoreError(f"{where}: unknown spora format_version {version!r}") from None
    if number > int(FORMAT_VERSION):
        raise StoreError(
            f"{where}: written in spora store format {number}, newer than format {FORMAT_VERSION} that this "
            "version of spora_zarr reads; upgrade spora_zarr"
        )
    return text


# -- the root document -------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CohortAttributes:
    """The ``spora`` attribute of the root group.

    Attributes
    ----------
    format_version
        The store format version (:data:`FORMAT_VERSION` when written here).
    modalities
        Modality directory (``he``, ``imc``, ``ihc/ihc_CD3``) -> level names, finest first.
    mask_kinds
        Mask kinds written (``tissue_masks``, ``cell_masks``).
    """

    format_version: str = FORMAT_VERSION
    modalities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    mask_kinds: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, spora: Mapping[str, Any], *, where: str) -> CohortAttributes:
        """Parse the root's ``spora`` attribute; ``StoreError`` when malformed or too new."""
        spora = _mapping(spora, where, "root attribute spora")
        version = check_format_version(spora.get("format_version", FORMAT_VERSION), where)
        modalities = spora.get("modalities", {})
        if not isinstance(modalities, Mapping) or not all(isinstance(v, (list, tuple)) for v in modalities.values()):
            raise StoreError(f"{where}: root attribute spora.modalities must map modality names to lists of levels")
        mask_kinds = _strings(spora.get("mask_kinds", ()), where, "root attribute spora.mask_kinds")
        try:  # names read back become paths: the same rule as names given by a user
            for modality in modalities:
                validate_modality(modality)
            for kind in mask_kinds:
                validate_name(kind, what="mask kind")
        except InvalidInputError as exc:
            raise StoreError(f"{where}: root attributes list an {exc}") from None
        return cls(
            format_version=version,
            modalities={str(m): tuple(map(str, levels)) for m, levels in sorted(modalities.items())},
            mask_kinds=tuple(map(str, mask_kinds)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "modalities": {m: list(levels) for m, levels in self.modalities.items()},
            "mask_kinds": list(self.mask_kinds),
        }

    def merged(self, modalities: Mapping[str, Iterable[str]] | None = None, mask_kinds: Iterable[str] = ()) -> CohortAttributes:
        """These attributes with ``modalities`` (and their levels) and ``mask_kinds`` added."""
        merged = {m: set(levels) for m, levels in self.modalities.items()}
        mask_kinds = tuple(validate_name(kind, what="mask kind") for kind in mask_kinds)
        for modality, levels in (modalities or {}).items():
            validate_modality(modality)
            merged.setdefault(modality, set()).update(levels)
        return dataclasses.replace(
            self,
            format_version=FORMAT_VERSION,
            modalities={m: tuple(sorted(levels, key=parse_resolution)) for m, levels in sorted(merged.items())},
            mask_kinds=tuple(sorted({*self.mask_kinds, *mask_kinds})),
        )


def read_cohort_attributes(location: Location) -> CohortAttributes | None:
    """The root's spora attributes, or ``None`` when there is no zarr group at the root.

    A root that is another kind of zarr node (:func:`check_not_foreign_root`), or a group inside a cohort
    store (not its root), is a ``StoreError``.
    """
    attributes = Staging(location).read_attributes("")
    check_not_foreign_root(location, attributes)
    if attributes is None:
        return None
    _check_not_inside_store(location, attributes)
    return CohortAttributes.from_dict(attributes.get("spora", {}), where=str(location))


def ngff_kind(attributes: Mapping[str, Any]) -> str | None:
    """What NGFF group attributes (0.4 at the top, 0.5 under ``ome``) describe, with the version:
    ``"an OME-Zarr image (NGFF 0.5)"``, ``... label image``, ``plate``, ``well``, ``bioformats2raw image collection``;
    ``None`` when they are not NGFF."""
    ome = attributes["ome"] if isinstance(attributes.get("ome"), Mapping) else attributes
    kinds = (
        ("multiscales", "label image" if "image-label" in ome else "image"),
        ("plate", "plate"),
        ("well", "well"),
        ("bioformats2raw.layout", "bioformats2raw image collection"),
    )
    kind = next((name for key, name in kinds if key in ome), None)
    if kind is None:
        return None
    version = ome.get("version")
    for key in ("multiscales", "plate", "well"):
        entry = ome.get(key)
        entry = entry[0] if isinstance(entry, list) and entry else entry
        if not version and isinstance(entry, Mapping):
            version = entry.get("version")
    return f"an OME-Zarr {kind}" + (f" (NGFF {version})" if version else "")


def check_not_foreign_root(location: Location, attributes: Mapping[str, Any] | None) -> None:
    """``StoreError`` when the root is not (or cannot become) a cohort store: a zarr v2 node, or an NGFF image, plate
    or well of its own (``attributes`` are the root group's, ``None`` when it has no zarr v3 group)."""
    if attributes is None:
        fs = Staging(location).fs
        found = [name for name in (".zgroup", ".zarray") if fs.exists(location.fs_path(name))]
        if found:
            try:
                kind = ngff_kind(json.loads(fs.cat_file(location.fs_path(".zattrs"))))
            except (OSError, ValueError, TypeError):
                kind = None
            node = "array" if found[0] == ".zarray" else "group"
            raise StoreError(
                f"{location}: a zarr v2 (zarr_format 2) {node}{f' holding {kind}' if kind else ''}, not a cohort store; "
                "cohort stores are zarr v3 (NGFF 0.5): add an image to one with `spora-zarr add-image`"
            )
        return
    kind = None if "spora" in attributes else ngff_kind(attributes)
    if kind is not None:
        raise StoreError(f"{location}: {kind}, not a cohort store; add it to a cohort with `spora-zarr add-image COHORT {location} ...`")


def is_cohort_store(location: Location) -> bool:
    """Whether ``location`` holds a cohort store root (a zarr group with ``spora`` attributes)."""
    attributes = Staging(location).read_attributes("")
    _check_not_inside_store(location, attributes)  # also a new folder inside a store: no store is made there
    return attributes is not None and "spora" in attributes


def _is_store_root(attributes: Mapping[str, Any] | None) -> bool:
    spora = (attributes or {}).get("spora")
    return isinstance(spora, Mapping) and "modalities" in spora


def _check_not_inside_store(location: Location, attributes: Mapping[str, Any] | None) -> None:
    """``StoreError`` naming the store when ``location`` (whose root document is ``attributes``) lies inside a cohort store."""
    if _is_store_root(attributes):
        return
    scheme, path = "", location.root
    if not location.is_local:
        scheme, path = location.root.split("://", 1)
        scheme += "://"
    parent = posixpath.dirname(path)
    while parent and parent != path:
        outer = Location(scheme + parent, location.storage_options)
        if _is_store_root(Staging(outer).read_attributes("")):
            inner = location.root[len(outer.root) :].strip("/")
            raise StoreError(f"{location}: not the root of a cohort store: it lies inside the store {outer} (as {inner!r}); use {outer}")
        path, parent = parent, posixpath.dirname(parent)


def update_cohort_attributes(
    location: Location, *, modalities: Mapping[str, Iterable[str]] | None = None, mask_kinds: Iterable[str] = ()
) -> CohortAttributes:
    """Create the root group, or merge ``modalities`` and ``mask_kinds`` into its attributes.

    The one writer of the root document: modalities, levels and mask kinds
    already recorded (by another conversion or by ``add-image``) are kept.
    Other root attributes (not ``spora``) are kept as they are.
    """
    document, current, updated = _merged_root(location, modalities, mask_kinds)
    if not document or updated != current:
        Staging(location).write_group_document("", {**document, "spora": updated.to_dict()})
    return updated


def staged_root_document(
    location: Location, *, modalities: Mapping[str, Iterable[str]] | None = None, mask_kinds: Iterable[str] = ()
) -> dict[str, bytes]:
    """``{"zarr.json": root document}`` with ``modalities`` and ``mask_kinds`` merged in; empty when it would not change.

    What :func:`update_cohort_attributes` writes, for a writer that stages the
    root document with its group (the ``files`` of the one writer).
    """
    document, current, updated = _merged_root(location, modalities, mask_kinds)
    if document and updated == current:
        return {}
    return {ZARR_JSON: group_document({**document, "spora": updated.to_dict()})}


def _merged_root(
    location: Location, modalities: Mapping[str, Iterable[str]] | None, mask_kinds: Iterable[str]
) -> tuple[dict[str, Any], CohortAttributes, CohortAttributes]:
    attributes = Staging(location).read_attributes("")
    check_not_foreign_root(location, attributes)
    _check_not_inside_store(location, attributes)
    document = attributes or {}
    current = CohortAttributes.from_dict(document.get("spora", {}), where=str(location))
    return document, current, current.merged(modalities, mask_kinds)


# -- image and label groups --------------------------------------------------------------
@dataclass(frozen=True)
class LevelMetadata:
    """One dataset of a multiscales: its array path (a resolution name) and y/x transform."""

    name: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    @property
    def mpp(self) -> float:
        """Microns per pixel on x (equal to y in a spora store)."""
        return self.scale[-1]

    @property
    def offset(self) -> float:
        """Translation in microns on x."""
        return self.translation[-1] if self.translation else 0.0


@dataclass(frozen=True)
class ChannelMetadata:
    """One ``omero`` channel: its label, colour (hex ``RRGGBB``) and contrast window, where given."""

    label: str
    color: str | None = None
    window: Mapping[str, float] | None = None


@dataclass(frozen=True, kw_only=True)
class SporaGroupAttributes:
    """The ``spora`` attribute of an image or label group.

    ``content_digests`` names the pixels the writer stored at each level (:mod:`spora_zarr.write.digest`);
    groups written before they were recorded have none.
    """

    format_version: str = FORMAT_VERSION
    kind: str = "image"
    tissue_id: str | None = None
    modality: str | None = None
    mask_kind: str | None = None
    channel_names: tuple[str, ...] = ()
    source_levels: tuple[str, ...] = ()
    content_digests: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KNOWN = ("format_version", "kind", "tissue_id", "modality", "mask_kind", "channel_names", "source_levels", "content_digests")

    @classmethod
    def from_dict(cls, spora: Mapping[str, Any], *, where: str) -> SporaGroupAttributes:
        """Parse a group's ``spora`` attribute; ``StoreError`` when malformed or too new."""
        spora = _mapping(spora, where, "attribute spora")
        return cls(
            format_version=check_format_version(spora.get("format_version", FORMAT_VERSION), where),
            kind=str(spora.get("kind", "image")),
            tissue_id=spora.get("tissue_id"),
            modality=spora.get("modality"),
            mask_kind=spora.get("mask_kind"),
            channel_names=_strings(spora.get("channel_names", ()), where, "attribute spora.channel_names"),
            source_levels=_strings(spora.get("source_levels", ()), where, "attribute spora.source_levels"),
            content_digests=_string_map(spora.get("content_digests", {}), where, "attribute spora.content_digests"),
            extra={k: v for k, v in spora.items() if k not in cls._KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        values = {
            "format_version": self.format_version,
            "kind": self.kind,
            "tissue_id": self.tissue_id,
            "modality": self.modality,
            "mask_kind": self.mask_kind,
            "channel_names": list(self.channel_names) if self.kind == "image" else None,
            "source_levels": list(self.source_levels),
            "content_digests": dict(self.content_digests) or None,
        }
        return {**{k: v for k, v in values.items() if v is not None}, **self.extra}


_MODELS_LOCK = threading.Lock()
_MODELS: list[Any] = []  # ImageAttrs, ImageLabelAttrs, Multiscale once imported and built


def ngff_models() -> tuple[Any, Any, Any]:
    """ome-zarr-models' ``ImageAttrs``, ``ImageLabelAttrs`` and ``Multiscale``, imported and built once a process.

    The import (with pydantic, about 0.8 s) and pydantic's build of a model
    deferred at import (``Multiscale``) happen on the first group parsed, which a
    dataset may leave to the first tile read, in a thread: under one lock, so two
    threads never build a model at once. Run before every fork too (as zarr's
    entry points are, :func:`~spora_zarr.read.engines.zarr.load_entry_points`): a
    process forked while another thread is in that import or build would inherit
    a lock (a module lock, a ``functools.cached_property`` lock) held by a thread
    it does not have, and hang on its first group; the hook waits for it instead.
    """
    if not _MODELS:
        with _MODELS_LOCK:
            if not _MODELS:
                from ome_zarr_models.v05.image import ImageAttrs
                from ome_zarr_models.v05.image_label import ImageLabelAttrs
                from ome_zarr_models.v05.multiscales import Multiscale

                for model in (ImageAttrs, ImageLabelAttrs, Multiscale):
                    model.model_rebuild()
                _MODELS.extend((ImageAttrs, ImageLabelAttrs, Multiscale))
    image, label, multiscale = _MODELS
    return image, label, multiscale


def ngff_models_built() -> bool:
    """Whether :func:`ngff_models` has imported and built the models in this process (it then returns at once)."""
    return bool(_MODELS)


def _build_ngff_models() -> None:
    ngff_models()


process.on_fork(before=_build_ngff_models)


def validate_ngff(model: Any, document: Any) -> Any:
    """``model.model_validate(document)`` for an ome-zarr-models ``model``, under :data:`spora_zarr.process.LOCK`.

    Its validators build pydantic classes (a multiscale's ``Transforms`` per
    level), which takes ``functools.cached_property`` locks: a fork waits for
    LOCK, so no forked child inherits one of them held.
    """
    with process.LOCK.get():
        return model.model_validate(document)


_MAX_MULTISCALES = 1024
_MULTISCALES: dict[bytes, Any] = {}  # a multiscale without its name, pickled -> the validated model (name None)


#: A label group with more colours than this has them checked by :func:`_plain_colors`, not one model each.
_MODEL_COLORS = 16


def _plain_colors(ome: Mapping[str, Any]) -> tuple[dict[str, Any], ...] | None:
    """The ``image-label.colors`` of ``ome`` when there are many and each is plain, checked as ome-zarr-models would.

    Plain: ``{"label-value": int, "rgba": [4 ints in 0-255]}``, label values unique, no ``properties``.
    ``None`` (anything else, or few colours) leaves the colours to ome-zarr-models and its own messages.
    """
    label = ome.get("image-label")
    if not isinstance(label, Mapping) or "properties" in label:
        return None
    colors = label.get("colors")
    if not isinstance(colors, list) or len(colors) <= _MODEL_COLORS:
        return None
    values = set()
    for color in colors:  # unrolled: a cell mask has hundreds
        if type(color) is not dict or len(color) != 2:
            return None
        value, rgba = color.get("label-value"), color.get("rgba")
        if type(value) is not int or type(rgba) is not list or len(rgba) != 4:
            return None
        r, g, b, a = rgba
        if type(r) is not int or type(g) is not int or type(b) is not int or type(a) is not int:
            return None
        if not (0 <= r <= 255 and 0 <= g <= 255 and 0 <= b <= 255 and 0 <= a <= 255):
            return None
        values.add(value)
    return tuple(colors) if len(values) == len(colors) else None


def _with_checked_multiscales(ome: Mapping[str, Any]) -> dict[str, Any]:
    """``ome`` with each multiscale replaced by its validated model, validated once per distinct multiscale.

    ome-zarr-models builds a pydantic class per level each time a multiscale is
    validated (milliseconds); the groups of a cohort share a few multiscales that
    differ only in ``name``, so each is validated once without its name and copied
    with it. Anything unusual (a name that is no string, an invalid multiscale) is
    left as it is, for the full validation to report in its own words.
    """
    from pydantic import ValidationError

    _, _, Multiscale = ngff_models()

    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list):
        return dict(ome)
    models = []
    for multiscale in multiscales:
        if not isinstance(multiscale, Mapping) or not isinstance(multiscale.get("name", ""), str):
            return dict(ome)
        unnamed = {k: v for k, v in multiscale.items() if k != "name"}
        key = pickle.dumps(unnamed, protocol=pickle.HIGHEST_PROTOCOL)  # lossless: equal bytes, equal JSON (a fraction of json.dumps's cost)
        if key not in _MULTISCALES:
            try:
                model = validate_ngff(Multiscale, unnamed)
            except ValidationError:
                return dict(ome)
            if len(_MULTISCALES) >= _MAX_MULTISCALES:
                _MULTISCALES.clear()
            _MULTISCALES[key] = model
        model = _MULTISCALES[key]
        models.append(model.model_copy(update={"name": multiscale["name"]} if "name" in multiscale else None))
    return {**ome, "multiscales": models}


@dataclass(frozen=True)
class GroupMetadata:
    """An image or label group's attributes: the validated NGFF model and the spora attributes.

    Attributes
    ----------
    ome
        ``ome_zarr_models.v05.image.ImageAttrs`` or ``...image_label.ImageLabelAttrs``.
    spora
        The group's spora attributes.
    label_colors
        A label group's ``image-label.colors`` as stored, when there are many plain ones
        (:func:`_plain_colors`): checked here and kept as JSON, and ``ome.image_label.colors`` is then
        ``None`` (one pydantic model per colour costs milliseconds a group); :meth:`to_attributes`
        puts them back.
    """

    ome: Any
    spora: SporaGroupAttributes
    label_colors: tuple[dict[str, Any], ...] | None = None

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, Any], *, where: str) -> GroupMetadata:
        """Parse and validate a group's attributes; ``StoreError`` naming ``where`` when they are not NGFF 0.5."""
        from pydantic import ValidationError

        ImageAttrs, ImageLabelAttrs, _ = ngff_models()

        ome = attributes.get("ome")
        if not isinstance(ome, Mapping) or not ome.get("multiscales"):
            raise StoreError(f"{where}: not a complete multiscale group (no ome.multiscales)")
        model = ImageLabelAttrs if "image-label" in ome else ImageAttrs
        checked = _with_checked_multiscales(ome)
        colors = _plain_colors(checked)
        if colors is not None:  # checked: the model validates the rest
            checked = {**checked, "image-label": {k: v for k, v in checked["image-label"].items() if k != "colors"}}
        try:
            parsed = validate_ngff(model, checked)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise StoreError(f"{where}: invalid NGFF 0.5 metadata at {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        for dataset in parsed.multiscales[0].datasets:  # a level is an array of this group: one safe path segment
            try:
                validate_name(str(dataset.path), what="level path in ome.multiscales", source=where)
            except InvalidInputError as exc:
                raise StoreError(str(exc)) from None
        return cls(parsed, SporaGroupAttributes.from_dict(attributes.get("spora", {}), where=where), colors)

    def to_attributes(self) -> dict[str, Any]:
        """The group's ``attributes`` as written in its ``zarr.json``."""
        ome = self.ome.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.label_colors is not None:
            ome["image-label"] = {**ome["image-label"], "colors": [dict(c) for c in self.label_colors]}
        return {"ome": ome, "spora": self.spora.to_dict()}

    @property
    def is_label(self) -> bool:
        return hasattr(self.ome, "image_label")

    @property
    def name(self) -> str:
        """The multiscales ``name`` (shown by viewers)."""
        return str(self.ome.multiscales[0].name or "")

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(axis.name for axis in self.ome.multiscales[0].axes)

    @property
    def levels(self) -> tuple[LevelMetadata, ...]:
        """The levels, finest first, with their y/x scale and translation (worked out once)."""
        levels = self.__dict__.get("_levels")  # not functools.cached_property: its lock (Python 3.11) would be forked held
        if levels is None:
            levels = self._read_levels()
            object.__setattr__(self, "_levels", levels)
        return levels

    def _read_levels(self) -> tuple[LevelMetadata, ...]:
        levels = []
        for dataset in self.ome.multiscales[0].datasets:
            scale: tuple[float, ...] = ()
            translation: tuple[float, ...] = ()
            for transform in dataset.coordinateTransformations:
                if transform.type == "scale":
                    scale = tuple(float(v) for v in transform.scale)
                elif transform.type == "translation":
                    translation = tuple(float(v) for v in transform.translation)
            levels.append(LevelMetadata(str(dataset.path), scale, translation))
        return tuple(levels)

    @property
    def level_names(self) -> list[str]:
        return [level.name for level in self.levels]

    def level(self, name: str) -> LevelMetadata:
        """The level called ``name``; ``KeyError`` when there is none."""
        for level in self.levels:
            if level.name == name:
                return level
        raise KeyError(name)

    @property
    def channels(self) -> tuple[ChannelMetadata, ...]:
        """The ``omero`` channels (empty for labels or when ``omero`` is absent)."""
        omero = (self.ome.model_extra or {}).get("omero") or {}
        channels = omero.get("channels") if isinstance(omero, Mapping) else None
        return tuple(
            ChannelMetadata(str(c.get("label", "")), c.get("color"), c.get("window"))
            for c in (channels if isinstance(channels, list) else [])
            if isinstance(c, Mapping)
        )

    @property
    def channel_names(self) -> list[str]:
        """Channel labels in stored order: ``omero`` labels, else the spora ``channel_names``."""
        channels = self.channels
        return [c.label for c in channels] if channels else list(self.spora.channel_names)


def _mapping(value: object, where: str, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StoreError(f"{where}: {name} must be a JSON object, got {_short(value)}")
    return value


def _strings(value: object, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
        raise StoreError(f"{where}: {name} must be a list of names, got {_short(value)}")
    return tuple(map(str, value))


def _string_map(value: object, where: str, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise StoreError(f"{where}: {name} must map level names to strings, got {_short(value)}")
    return dict(value)


def _short(value: object, limit: int = 120) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The modality dataclasses of the spora dataset API: a name and a directory in the store."""

from __future__ import annotations

from dataclasses import dataclass

from ..store.layout import modality_dir


@dataclass(frozen=True)
class Modality:
    """An imaging modality: its name and canonical directory in the store."""

    name: str
    directory: str


@dataclass(frozen=True)
class HEModality(Modality):
    name: str = "he"
    directory: str = "he"


@dataclass(frozen=True)
class MultiplexModality(Modality):
    """Base of the multiplex modalities (per-channel images with a channel table)."""


@dataclass(frozen=True)
class IMCModality(MultiplexModality):
    name: str = "imc"
    directory: str = "imc"


@dataclass(frozen=True)
class CycIFModality(MultiplexModality):
    name: str = "cycif"
    directory: str = "cycif"


@dataclass(frozen=True)
class IHCModality(Modality):
    """Single-marker RGB IHC, stored under ``ihc/ihc_<marker>``."""

    marker: str = ""
    name: str = "ihc"
    directory: str = ""

    def __post_init__(self) -> None:
        if not self.directory:
            object.__setattr__(self, "directory", modality_dir("ihc", self.marker))
        object.__setattr__(self, "name", f"ihc_{self.marker}")


MULTIPLEX_MODALITIES: dict[str, MultiplexModality] = {m.directory: m for m in (IMCModality(), CycIFModality())}


def as_multiplex_modality(modality: str | MultiplexModality) -> MultiplexModality:
    """A multiplex modality from its dataclass or directory name (unknown names are accepted)."""
    if isinstance(modality, MultiplexModality):
        return modality
    return MULTIPLEX_MODALITIES.get(modality, MultiplexModality(name=modality, directory=modality))

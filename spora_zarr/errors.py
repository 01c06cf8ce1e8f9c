"""The one error hierarchy of spora_zarr.

Messages name the store or file, what was expected and what was found, so a
command-line user gets a single line that explains the failure.
"""

from __future__ import annotations

import re


class SporaZarrError(Exception):
    """Base class of every error spora_zarr raises on purpose."""


class InvalidInputError(SporaZarrError, ValueError):
    """A source file, table or argument that cannot be converted or used as given."""


class NotFoundError(SporaZarrError, FileNotFoundError):
    """Something asked for (a tissue, resolution, channel, store) that is not there."""

    def __str__(self) -> str:  # FileNotFoundError formats args as a tuple otherwise
        return str(self.args[0]) if self.args else ""


class StoreError(SporaZarrError):
    """A store whose content breaks the spora_zarr layout or NGFF rules."""


_QUOTED_BYTES = re.compile(r"""(?:\b\w+=)?\bb(['"])(?:\\.|(?!\1).)*\1""")


def reason(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when empty), for a one-line error.

    A first line longer than ``limit`` characters is cut at the last word
    boundary before it and ends with an ellipsis, never mid-word. Bytes a
    reader quotes from the file (tifffile's ``header=b'...'``) are left out:
    an unreadable file's content is never echoed.
    """
    text = str(exc).strip()
    line = _QUOTED_BYTES.sub("", text.splitlines()[0]).strip().rstrip(" :=,") if text else type(exc).__name__
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:(") + "…"

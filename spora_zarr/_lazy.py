"""Lazy public names of a package: each imports its module on first use (PEP 562)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_module_attributes"]


def lazy_module_attributes(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module ``__getattr__`` and ``__dir__`` for names imported on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    homes : mapping
        Public name -> the module that defines it, relative to the package
        (``".read.cohort"``) or absolute.

    Returns
    -------
    (__getattr__, __dir__)
        ``__getattr__`` imports the name's module, caches the value in the
        package's namespace (later uses cost nothing) and returns it; an
        unknown name raises ``AttributeError`` naming the package.
        ``__dir__`` lists the package's own names and the lazy ones.

    Examples
    --------
    In a package's ``__init__.py``::

        __getattr__, __dir__ = lazy_module_attributes(__name__, {"open_cohort": ".read.cohort"})
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__

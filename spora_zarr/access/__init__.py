"""The access layer: value types and the typed interface the features read tissues through.

This module imports only :mod:`.resolution` eagerly (``store/layout.py``
depends on it); nothing here may import a store-dependent module at import time.
"""

from .resolution import Resolution, ResolutionLike, parse_resolution

__all__ = ["Resolution", "ResolutionLike", "parse_resolution"]

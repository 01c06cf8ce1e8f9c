"""Standardization spec names: ``identity``, ``quantile_clipping/uq_<q>_<image|global>``, ``quantile_clipping_log1p/...``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidInputError

__all__ = ["IDENTITY", "METHODS", "SCOPES", "Spec", "parse_spec"]

IDENTITY = "identity"
METHODS = ("quantile_clipping", "quantile_clipping_log1p")
SCOPES = ("image", "global")
_SUFFIX = re.compile(r"^uq_(?P<q>[0-9]*\.?[0-9]+)_(?P<scope>[a-z]+)$")
_FORMS = (
    "identity, quantile_clipping/uq_<q>_<image|global>, quantile_clipping_log1p/uq_<q>_<image|global> "
    "(e.g. quantile_clipping/uq_0.99_image)"
)


@dataclass(frozen=True)
class Spec:
    """A parsed stats-backed spec.

    Attributes
    ----------
    method : str
        ``quantile_clipping`` or ``quantile_clipping_log1p``.
    quantile : float
        The clipping quantile, in (0, 1].
    scope : str
        ``image`` (an upper bound per tissue and channel) or ``global`` (per channel over the cohort).
    """

    method: str
    quantile: float
    scope: str
    name: str

    @property
    def log1p(self) -> bool:
        return self.method == "quantile_clipping_log1p"


def parse_spec(spec: str) -> Spec:
    """Parse a stats-backed spec name; ``InvalidInputError`` naming the valid forms otherwise.

    ``identity`` is not stats-backed and is refused here (callers handle it first).
    """
    text = str(spec).strip().strip("/")
    method, _, suffix = text.partition("/")
    if text == "identity":
        raise InvalidInputError("spec 'identity' needs no statistics: give a quantile_clipping spec to compute, or use identity as it is")
    if method not in METHODS:
        raise InvalidInputError(f"unknown standardization spec {spec!r}; expected one of: {_FORMS}")
    match = _SUFFIX.match(suffix)
    if not match:
        raise InvalidInputError(
            f"malformed standardization spec {spec!r}: the suffix must be uq_<q>_<image|global> with 0 < q <= 1, got {suffix!r}"
        )
    q, scope = float(match.group("q")), match.group("scope")
    if scope not in SCOPES:
        raise InvalidInputError(f"malformed standardization spec {spec!r}: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not 0 < q <= 1:
        raise InvalidInputError(f"malformed standardization spec {spec!r}: the quantile must be in (0, 1], got {q}")
    return Spec(method, q, scope, f"{method}/{suffix}")

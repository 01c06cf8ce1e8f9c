"""Generate ``docs/api.md``: a short API reference from the docstrings of spora_zarr's public names.

The page has one section for ``spora_zarr`` and one for each public subpackage
with an ``__all__`` (found by walking the package, so a new subpackage appears
by itself): every name of ``__all__`` with its signature and the first
paragraph of its docstring. A name documented in an earlier section (the
curated top-level names re-export the subpackages') is listed once more as a
reference only.

Run ``python scripts/api_reference.py`` after changing a public name or its
docstring; ``tests/test_api_reference.py`` fails while the page is out of date.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "api.md"
PACKAGE = "spora_zarr"
#: Values of constants longer than this are shown by their type only.
MAX_VALUE_CHARS = 100

_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_QUOTED_ANNOTATION = re.compile(r"(: |-> )(['\"])(.*?)\2(?=, |\)|$| =)")

HEADER = """# API reference

Generated from the docstrings by `python scripts/api_reference.py`; do not edit by hand
(`tests/test_api_reference.py` fails while this page is out of date). The guides in `docs/` say how
the parts fit together; this page lists what each public package offers.
"""


def public_packages() -> list[ModuleType]:
    """``spora_zarr`` and its public subpackages that declare ``__all__``, in name order after the root."""
    root = importlib.import_module(PACKAGE)
    found = [root]
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
        if info.ispkg and not info.name.startswith("_"):
            package = importlib.import_module(f"{PACKAGE}.{info.name}")
            if hasattr(package, "__all__"):
                found.append(package)
    return found


def summary(obj: object) -> str:
    """The first paragraph of ``obj``'s own docstring on one line, Sphinx roles reduced to code spans ('' if none)."""
    doc = obj.__doc__ if isinstance(obj, type | ModuleType) or callable(obj) else None
    if not isinstance(doc, str):
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n")[0]
    text = " ".join(line.strip() for line in paragraph.splitlines())
    return _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text).replace("``", "`")


def signature(name: str, obj: object) -> str:
    """``name(parameters) -> return`` for a function or class, ``name = value`` for a constant."""
    if inspect.isclass(obj) or callable(obj):
        try:
            text = f"{name}{inspect.signature(obj)}"
        except (TypeError, ValueError):
            text = f"{name}(...)"
        return _QUOTED_ANNOTATION.sub(r"\1\3", _ADDRESS.sub("", text))
    value = repr(sorted(obj, key=repr)) if isinstance(obj, set | frozenset) else repr(obj)
    return f"{name} = {value}" if len(value) <= MAX_VALUE_CHARS else f"{name}: {type(obj).__name__}"


def kind(obj: object) -> str:
    """``class``, ``function`` or ``constant``."""
    if inspect.isclass(obj):
        return "class"
    return "function" if callable(obj) else "constant"


def section(package: ModuleType, documented: dict[int, str]) -> str:
    """The section of one package; ``documented`` maps the id of each class or function already shown to its full name."""
    lines = [f"## `{package.__name__}`", "", summary(package), ""]
    seen_before = []
    for name in sorted(package.__all__, key=str.lower):
        obj = getattr(package, name)
        identity = id(obj) if inspect.isclass(obj) or inspect.isroutine(obj) else None
        if identity is not None and identity in documented:
            seen_before.append(f"`{name}` (`{documented[identity]}`)")
            continue
        if identity is not None:
            documented[identity] = f"{package.__name__}.{name}"
        lines += [f"### `{name}` ({kind(obj)})", "", "```python", signature(name, obj), "```", ""]
        text = summary(obj) if kind(obj) != "constant" else ""
        if text:
            lines += [text, ""]
    if seen_before:
        lines += ["Also here, documented above: " + ", ".join(seen_before) + ".", ""]
    return "\n".join(lines)


def render() -> str:
    """The whole page."""
    documented: dict[int, str] = {}
    body = "\n".join(section(package, documented) for package in public_packages())
    return (HEADER + "\n" + body).rstrip("\n") + "\n"


def main() -> int:
    """Write ``docs/api.md``."""
    API_PAGE.write_text(render())
    print(f"wrote {API_PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # document this checkout, whatever spora_zarr is installed
    sys.exit(main())

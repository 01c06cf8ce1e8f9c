"""docs/api.md is generated from the docstrings: it must match what scripts/api_reference.py writes now."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "api_reference.py"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_page_is_current() -> None:
    generator = load_generator()
    page = generator.API_PAGE
    if not page.exists() or page.read_text() != generator.render():
        pytest.fail("docs/api.md is out of date with the docstrings: run python scripts/api_reference.py", pytrace=False)


def test_api_page_lists_every_public_package_and_name() -> None:
    text = load_generator().render()
    import spora_zarr
    import spora_zarr.read

    assert "## `spora_zarr.read`" in text and "## `spora_zarr.torch`" in text
    for name in [*spora_zarr.__all__, *spora_zarr.read.__all__]:
        assert f"`{name}`" in text, name
    assert " at 0x" not in text  # no object addresses: the page is the same on every run

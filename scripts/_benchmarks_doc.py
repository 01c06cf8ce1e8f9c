"""The one writer of ``docs/benchmarks.md``: each benchmark script replaces its own ``## <title>`` section."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(section: str, path: Path = DOCS) -> None:
    """Replace the section headed by ``section``'s first line (or append it), keeping every other section.

    A section runs from its ``## `` heading to the next ``## `` heading or the end.
    """
    section = section.strip("\n")
    heading = section.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")

"""Generated sections of the docs: the text between two marker lines, rewritten by a script."""

from __future__ import annotations

from pathlib import Path


def write_section(text: str, path: Path, markers: tuple[str, str]) -> None:
    """Replace the text between ``markers`` (start, end) in ``path``, or append it with them."""
    start, end = markers
    doc = path.read_text() if path.is_file() else ""
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)

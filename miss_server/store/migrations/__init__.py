"""Versioned SQL migrations, one directory per dialect.

Files are named ``NNNN_description.sql``; a migration's version is its
number. :func:`migrations` lists them in order for a dialect.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["latest_version", "migrations"]


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every migration of ``dialect``, oldest first."""
    folder = resources.files(__package__).joinpath(dialect)
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(out)


def latest_version(dialect: str) -> int:
    found = migrations(dialect)
    return found[-1][0] if found else 0

"""The embedded store's directory search (SPEC §11.3), a job for its
searcher thread (``sqlite_threads.py``).

A query that matches many users is best served by walking the directory
(migration 0005) in name order until enough rows match (a few hundred rows
at most); one that matches few, by the trigram index (MATCH, Unicode case
folding) and a sort of its matches. :func:`search_directory` tries the first
for ``DIRECTORY_WALK`` rows, then falls back to the second.
"""

from __future__ import annotations

import json
import sqlite3

from .base import User
from .rows import USER_COLUMNS, to_user

__all__ = ["DIRECTORY_WALK", "search_directory"]

_DIRECTORY_WALK = """
SELECT u.rowid, s.text FROM users u INDEXED BY users_directory JOIN users_search s ON s.rowid = u.rowid
WHERE u.attestation IS NOT NULL AND NOT u.suspended AND NOT u.service
ORDER BY u.name, u.user_id
LIMIT :rows"""
_SEARCH_MATCHES = f"""
SELECT {USER_COLUMNS} FROM users
WHERE rowid IN (SELECT rowid FROM users_search WHERE users_search MATCH :q)
  AND attestation IS NOT NULL AND NOT suspended AND NOT service
ORDER BY name, user_id
LIMIT :limit"""
_USERS_BY_ROWID = f"""
SELECT {USER_COLUMNS} FROM users WHERE rowid IN (SELECT value FROM json_each(:rowids))
ORDER BY name, user_id"""
#: Directory rows a search walks before it asks the trigram index instead.
DIRECTORY_WALK = 600


def search_directory(conn: sqlite3.Connection, query: str, limit: int) -> list[User]:
    """:meth:`Store.search_users <.base.Store.search_users>` for a query the
    directory answers (``common.searchable``)."""
    folded = query.lower()
    found, walked = [], 0
    for rowid, text in conn.execute(_DIRECTORY_WALK, {"rows": DIRECTORY_WALK}):
        walked += 1
        if folded in text.lower():
            found.append(rowid)
            if len(found) == limit:
                break
    else:
        if walked == DIRECTORY_WALK:  # the directory goes on: few match, ask the index
            phrase = '"' + query.replace('"', '""') + '"'
            rows = conn.execute(_SEARCH_MATCHES, {"q": phrase, "limit": limit}).fetchall()
            return [to_user(r) for r in rows]
    rows = conn.execute(_USERS_BY_ROWID, {"rowids": json.dumps(found)}).fetchall()
    return [to_user(r) for r in rows]

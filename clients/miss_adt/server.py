"""The MLLP listener and its configuration file.

:func:`start_mllp` serves :meth:`AdtService.handle` over MLLP with the
``hl7`` library's asyncio server: each connection reads one block
(``<VT>message<FS><CR>``) at a time and answers it before reading the
next, as MLLP senders expect. A block that does not start with ``<VT>``
ends the connection (the stream cannot be resynchronised); a block over
``max_message`` bytes is answered ``AE`` and skipped.

The configuration (:func:`load_config`) is a TOML file; relative paths are
relative to it::

    [listen]
    host = "0.0.0.0"          # default 127.0.0.1
    port = 2575               # default 2575

    [hub]
    profile = "profile"                 # the service's profile directory
    passphrase_file = "passphrase"      # its passphrase, alone in a file
    request_timeout = 10                # seconds before a send is spooled
    reconnect_max_seconds = 30          # longest wait between two connection attempts

    [mapping]
    file = "mapping.toml"     # default: miss_adt/default_mapping.toml

    [spool]
    database = "miss-adt.db"  # answers, notices, spool (SQLite)
    max = 100000              # spooled operations before AR "spool full"
    retry_max_seconds = 60    # longest wait between two retries

    [audit]
    file = "audit.jsonl"
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hl7.mllp import InvalidBlockError, start_hl7_server

from .acks import Outcome, build_ack
from .service import DEFAULT_SPOOL_MAX, AdtService

__all__ = ["AdtConfig", "ConfigError", "load_config", "start_mllp"]

log = logging.getLogger("miss_adt")

#: Largest MLLP block read (bytes); an ADT message is a few kB.
MAX_MESSAGE = 1 << 20


class ConfigError(ValueError):
    """The configuration file is unusable; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class AdtConfig:
    host: str
    port: int
    profile: Path
    passphrase_file: Path
    request_timeout: float
    reconnect_max: float
    mapping: Path | None
    database: Path
    spool_max: int
    retry_max: float
    audit: Path


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] : une table est attendue")
    return value


def load_config(path: Path) -> AdtConfig:
    """Read the configuration file (see the module docstring)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path} : {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} : TOML invalide ({exc})") from exc
    base = path.resolve().parent

    def where(value: object, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{what} : un chemin est attendu")
        return base / Path(value).expanduser()

    listen, hub, spool, audit = (_table(data, n) for n in ("listen", "hub", "spool", "audit"))
    mapping = _table(data, "mapping").get("file")
    try:
        return AdtConfig(
            host=str(listen.get("host", "127.0.0.1")),
            port=int(listen.get("port", 2575)),
            profile=where(hub.get("profile"), "[hub] profile"),
            passphrase_file=where(hub.get("passphrase_file"), "[hub] passphrase_file"),
            request_timeout=float(hub.get("request_timeout", 10)),
            reconnect_max=float(hub.get("reconnect_max_seconds", 30)),
            mapping=None if mapping is None else where(mapping, "[mapping] file"),
            database=where(spool.get("database", "miss-adt.db"), "[spool] database"),
            spool_max=int(spool.get("max", DEFAULT_SPOOL_MAX)),
            retry_max=float(spool.get("retry_max_seconds", 60)),
            audit=where(audit.get("file", "audit.jsonl"), "[audit] file"),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path} : valeur invalide ({exc})") from exc


async def start_mllp(
    service: AdtService, host: str, port: int, *, max_message: int = MAX_MESSAGE
) -> asyncio.Server:
    """Listen on ``host:port`` (0: any free port) and answer every message."""

    async def connection(reader: Any, writer: Any) -> None:
        peer = writer.get_extra_info("peername")
        log.info("MLLP connection from %s", peer)
        try:
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:
                    break  # the peer closed
                except InvalidBlockError:
                    log.warning("MLLP block without <VT> from %s: closing", peer)
                    break
                except ValueError:
                    outcome = Outcome("AE", "refused", "too_large", 100, "", "message trop long")
                    service.audit.write("refused", ack="AE", reason="too_large", detail=outcome.detail)
                    writer.writeblock(build_ack(outcome, {}).encode())
                    await writer.drain()
                    continue
                try:
                    ack, codec = await service.handle(block)
                except Exception:
                    # No ACK: the feed resends, and MSH-10 makes that safe.
                    log.exception("internal error on a message from %s: closing without ACK", peer)
                    break
                writer.writeblock(ack.encode(codec, "replace"))
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("MLLP connection from %s ended: %s", peer, exc)
        finally:
            writer.close()

    return await start_hl7_server(connection, host, port, limit=max_message)  # type: ignore[no-any-return]

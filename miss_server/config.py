"""Hub configuration: one validated object, read once by the composition root.

Sources, strongest first: explicit overrides (command-line flags), ``MISS_*``
environment variables (``MISS_PORT=9000``), a TOML file (``--config`` or
``MISS_CONFIG``), then the defaults below. With no configuration at all the
hub serves the embedded defaults (in-process broker, SQLite under
``./miss-data``) on 127.0.0.1:8765.

Anything invalid (unknown key, wrong type, out-of-range value, unreadable
file) raises :class:`ConfigError` whose message names every bad setting and
where it came from; ``miss-server`` prints it and exits with status 2.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from protocol import rotation
from protocol.attestation import decode_authority_key, encode_authority_key

from .ratelimit import parse_rate
from .web import normalise_origin

__all__ = ["ConfigError", "Settings", "load_settings"]

DEFAULT_STORE = "sqlite:///miss-data/miss.db"


class ConfigError(Exception):
    """The configuration cannot be used; the message says why."""


class Settings(BaseSettings):
    """Every setting of a hub node (README, "Configuration reference")."""

    model_config = SettingsConfigDict(env_prefix="MISS_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8765, ge=0, le=65535, description="TCP port (0 picks a free one).")
    store: str = Field(
        DEFAULT_STORE,
        description="Where durable state lives: sqlite:///PATH (relative to the working directory) "
        "or sqlite:////ABSOLUTE/PATH; postgresql://... in production.",
    )
    broker: str = Field(
        "memory://",
        description="memory:// (one node) or redis://host:port/db[?prefix=NAME] (several nodes).",
    )
    store_pool_size: int = Field(
        10,
        ge=2,
        le=500,
        description="PostgreSQL connections this node may hold at once (each worker its own): "
        "a reconnection storm's authentications wait for a free one "
        "(15 s at most, then storage_unavailable). "
        "Keep nodes x workers x this under the server's max_connections.",
    )
    message_ttl_days: float = Field(30, gt=0, le=3650, description="How long undelivered envelopes are kept.")
    invite_ttl_hours: float = Field(72, gt=0, le=24 * 90, description="Lifetime of an invitation code.")
    link_code_ttl_minutes: float = Field(15, gt=0, le=24 * 60, description="Lifetime of a device link code.")
    max_frame_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024, description="Largest accepted frame.")
    auth_timeout_seconds: float = Field(
        10, gt=0, le=300, description="Time a new connection has to authenticate."
    )
    handshake_timeout_seconds: float = Field(
        10,
        gt=0,
        le=300,
        description="Time a new TCP connection has to complete its HTTP request (the WebSocket upgrade, "
        "or /healthz, /readyz...); then it is closed. With tls_cert, the TLS handshake has as long again.",
    )
    ping_interval_seconds: float = Field(
        20,
        gt=0,
        le=3600,
        description="How long a WebSocket connection may stay silent before the hub pings it (liveness); "
        "anything the client sends, its own pings included, counts.",
    )
    ping_timeout_seconds: float = Field(
        20,
        gt=0,
        le=3600,
        description="Time a connection has to answer a ping; then it is closed with 1011 (keepalive "
        "ping timeout). A dead client is cut within ping_interval_seconds + ping_timeout_seconds.",
    )
    shutdown_grace_seconds: float = Field(
        20,
        gt=0,
        le=3600,
        description="On SIGTERM or SIGINT, the longest the node takes to drain: tell its clients to go "
        "elsewhere (close 1001), answer the requests in hand, flush the audit trail; past it, it "
        "closes what remains and exits anyway.",
    )
    shutdown_spread_seconds: float = Field(
        5,
        ge=0,
        le=600,
        description="Window over which a draining node closes its clients' connections (1001), so that "
        "their reconnections do not reach the other nodes at once; at most half of shutdown_grace_seconds.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Hub processes serving the port on this machine (one per core): with more than one, "
        "`miss-server` supervises that many worker processes, each a node of its own, sharing the "
        "port (SO_REUSEPORT); they need a postgresql:// store and a redis:// broker (supervisor.py).",
    )
    metrics_port_base: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Worker i (from 0) also serves /metrics, /healthz and /readyz, and nothing else, on "
        "port metrics_port_base + i, so that a scrape reaches each worker (on the shared port, one at "
        "random). Default: none.",
    )
    presence_ttl_seconds: float = Field(
        30, ge=1, le=600, description="Longest time a device of a dead hub node still shows online."
    )
    expiry_interval_seconds: float = Field(60, gt=0, description="How often expired envelopes are purged.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    tls_cert: Path | None = Field(None, description="PEM certificate chain; serve wss:// directly.")
    tls_key: Path | None = Field(None, description="PEM private key file for tls_cert.")
    authority_key: str | None = Field(
        None,
        description="Public key (base64) of the verification authority, as `miss-admin authority init` "
        "prints it. Without it no account counts as verified, so nobody can send.",
    )
    authority_rotations: tuple[str, ...] = Field(
        (),
        description="The verification authority's key rotation statements (base64, oldest first), as "
        "`miss-admin authority rotate` prints them: a chain from an older key to authority_key. The "
        "hub sends them in its challenge so that clients move to the new key (SPEC §15), and accepts "
        "what an older key signed until that statement's end. In TOML a list, in the environment a "
        "JSON list (MISS_AUTHORITY_ROTATIONS='[\"...\"]').",
    )
    rate_device: str = Field(
        "10/s burst 50",
        description="Requests (send, lookup, search...) one device may make; acks have their own budget.",
    )
    rate_service: str = Field(
        "100/s burst 500",
        description="Requests one device of a service account may make, instead of rate_device "
        "(SPEC §17.4): a feed of notices sends more than a person.",
    )
    rate_ack: str = Field(
        "50/s burst 500",
        description="Ack and ping frames one device may send (each costs 1, plus 1 per full 4 KiB); "
        "over it, the device is read more slowly.",
    )
    rate_search: str = Field(
        "1/s burst 10", description="Directory searches one device may make, on top of rate_device."
    )
    rate_address: str = Field(
        "200/s burst 400", description="Requests of all devices behind one client address (a hospital NAT)."
    )
    rate_auth: str = Field(
        "100/s burst 1000", description="Authentication and enrollment attempts from one client address."
    )
    rate_failed_auth: str = Field(
        "10/min burst 20",
        description="Failed authentications and wrong enrollment codes per client address; past it, "
        "the address's next failed auth is answered after a pause and its enrollments are held "
        "(at most 3 s each), never refused unchecked.",
    )
    max_envelopes: int = Field(
        64, ge=1, le=64, description="Most envelopes (recipient + own devices) in one message."
    )
    max_devices: int = Field(
        8,
        ge=1,
        le=32,
        description="Most active devices per clinician (unused link codes count): at most 32, so that a "
        "message to one clinician and the sender's other devices fits in 64 envelopes.",
    )
    max_team_members: int = Field(
        100, ge=1, le=200, description="Most members of a care team (SPEC §13.1; at most 200)."
    )
    max_teams_per_user: int = Field(
        64, ge=1, le=10_000, description="Most care teams a clinician is a member of, and creates."
    )
    max_services_per_org: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Most service accounts (miss-admin service create) of one organisation (SPEC §17.4).",
    )
    max_roles_per_user: int = Field(
        16,
        ge=1,
        le=1000,
        description="Most on-call roles a clinician holds by taking them in a client (SPEC §14.1); "
        "scheduled shifts and administrators' assignments do not count.",
    )
    escalation_min_interval_ms: int = Field(
        60_000,
        ge=100,
        le=86_400_000,
        description="Shortest re-notification interval, step delay and final delay of an urgent "
        "message's escalation policy (SPEC §14.3; at least 100 ms).",
    )
    escalation_max_steps: int = Field(
        3, ge=0, le=5, description="Most escalation steps (backups) of a policy (at most 5)."
    )
    escalation_default_interval_ms: int = Field(
        120_000,
        ge=100,
        le=86_400_000,
        description="Re-notification interval of an urgent message when neither its role nor an "
        "organisation sets one.",
    )
    escalation_default_final_ms: int = Field(
        600_000,
        ge=100,
        le=86_400_000,
        description="Time after its last step (after the send when none) an urgent message's sender "
        "is told nobody acknowledged it, when neither its role nor an organisation sets one.",
    )
    max_open_urgent_per_user: int = Field(
        20,
        ge=1,
        le=1000,
        description="Most urgent messages of one clinician still escalating (neither acknowledged, "
        "unacknowledged nor expired); past it an urgent send answers urgent_limit (SPEC §14.4).",
    )
    escalation_tick_ms: int = Field(
        250,
        ge=10,
        le=60_000,
        description="How often each node looks for due escalation steps, reminders and final "
        "deadlines (a step fires at most about this late).",
    )
    max_pending_per_address: int = Field(
        256,
        ge=1,
        description="Connections not yet authenticated from one client address (at most a quarter of "
        "the max_pending in force).",
    )
    max_connections_per_account: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Authenticated connections of one clinician's devices at once, over every hub node "
        "(a device's own older connections, which the new one replaces, do not count); the next is "
        "refused with too_many_connections. Default: 3 times max_devices.",
    )
    max_pending: int = Field(
        4096,
        ge=1,
        description="Connections not yet authenticated in all (at most a quarter of the open-file limit).",
    )
    metrics_token_file: Path | None = Field(
        None,
        description="File holding the bearer token that GET /metrics requires; without it, /metrics "
        "answers loopback clients only.",
    )
    trust_forwarded_for: bool = Field(
        False,
        description="Take the client address from the last X-Forwarded-For entry (only behind a "
        "reverse proxy that sets it, as deploy/nginx.conf does).",
    )
    web_client: bool = Field(
        True,
        description="Serve the browser client (miss_server/static/) at GET / on the hub's port; "
        "a WebSocket upgrade on / reaches the hub either way.",
    )
    blob_store: str = Field(
        "",
        description="Where attachments' encrypted bytes live (SPEC §16): file:///ABSOLUTE/DIR (one file "
        "per blob and an index.db) or postgresql://... Default: with a sqlite store, the directory "
        "blobs/ beside its database file; with a postgresql store, that same database.",
    )
    max_attachments: int = Field(6, ge=1, le=16, description="Most attachments (blobs) in one message.")
    max_attachment_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1,
        le=1024 * 1024 * 1024,
        description="Largest attachment (plaintext bytes; its upload is cipher_size of it).",
    )
    blob_quota_bytes_per_day: int = Field(
        1024**3, ge=1, description="Bytes of uploads one device may begin per UTC day."
    )
    blob_quota_per_day: int = Field(500, ge=1, description="Uploads one device may begin per UTC day.")
    max_open_uploads: int = Field(
        12, ge=1, le=1000, description="Uploads of one device begun and not yet complete."
    )
    blob_stored_bytes_per_user: int = Field(
        8 * 1024**3, ge=1, description="Bytes of blobs stored for one clinician (all devices) at once."
    )
    blob_link_seconds: float = Field(
        600, gt=0, le=7 * 86_400, description="Lifetime of a download link (/blobs/TOKEN) from blob_link."
    )
    blob_upload_ttl_seconds: float = Field(
        86_400,
        gt=0,
        le=30 * 86_400,
        description="Time an upload (complete or not) may stay unattached to a message before it is deleted.",
    )
    rate_blob: str = Field(
        "400/s burst 800",
        description="blob_put frames (upload pieces of up to 60 KiB) one device may send: its own "
        "budget, apart from rate_device (which blob_begin, blob_end and blob_link spend).",
    )
    rate_download: str = Field(
        "100/s burst 400",
        description="GET /blobs/... requests (parts of at most 1 MiB) from one client address to one node; "
        "over it 429 with Retry-After, before the store is read.",
    )
    max_blob_downloads: int = Field(
        32,
        ge=1,
        le=10_000,
        description="Downloads (GET /blobs/...) in progress on one node; the next is answered 503 "
        "with Retry-After. Each holds at most 1 MiB.",
    )
    # NoDecode: MISS_ALLOWED_ORIGINS is a comma-separated list, not JSON.
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Origins (https://host[:port]) besides the hub's own whose pages may open a "
        "WebSocket to it; an upgrade carrying another Origin is refused with 403. "
        "In the environment: comma-separated.",
    )

    @field_validator("store")
    @classmethod
    def _known_store(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v

    @field_validator("blob_store")
    @classmethod
    def _known_blob_store(cls, v: str) -> str:
        if v and not v.startswith(("file:///", "postgresql://", "postgres://")):
            raise ValueError("must be empty (the default) or start with file:/// or postgresql://")
        return v

    @field_validator("broker")
    @classmethod
    def _known_broker(cls, v: str) -> str:
        if not v.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("must be memory:// or start with redis:// or rediss://")
        return v

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [o for o in (part.strip() for part in v.split(",")) if o]
        if isinstance(v, list | tuple):
            return tuple(normalise_origin(o) if isinstance(o, str) else o for o in v)
        return v

    @field_validator("authority_key")
    @classmethod
    def _authority_key(cls, v: str | None) -> str | None:
        if v is not None:
            decode_authority_key(v)  # raises ValueError with a clear message
        return v

    @field_validator("metrics_token_file")
    @classmethod
    def _token_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            try:
                token = v.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read {v}: {exc.strerror or exc}") from None
            if len(token) < 16:
                raise ValueError(f"{v} must hold a token of at least 16 characters")
        return v

    @field_validator(
        "rate_device",
        "rate_service",
        "rate_address",
        "rate_auth",
        "rate_failed_auth",
        "rate_ack",
        "rate_search",
        "rate_blob",
        "rate_download",
    )
    @classmethod
    def _rate(cls, v: str) -> str:
        parse_rate(v)  # raises ValueError with a clear message
        return v

    def model_post_init(self, __context: Any) -> None:
        self._check_rotations()
        self._check_workers()
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        floor = self.escalation_min_interval_ms
        if min(self.escalation_default_interval_ms, self.escalation_default_final_ms) < floor:
            raise ValueError(
                "escalation_default_interval_ms and escalation_default_final_ms must be at least "
                "escalation_min_interval_ms"
            )

    @property
    def store_display(self) -> str:
        """The store URL without its password, for logs and banners."""
        return _redact(self.store)

    @property
    def broker_display(self) -> str:
        return _redact(self.broker)

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file, for a ``sqlite:///`` store."""
        return Path(self.store.removeprefix("sqlite:///"))

    @property
    def blob_store_url(self) -> str:
        """``blob_store``, or its default: ``file://`` the directory ``blobs``
        beside a sqlite store's database (absolute), the store's URL for a
        postgresql store."""
        if self.blob_store:
            return self.blob_store
        if self.store.startswith("sqlite:///"):
            return (self.sqlite_path.resolve().parent / "blobs").as_uri()
        return self.store

    @property
    def blob_store_display(self) -> str:
        return _redact(self.blob_store_url)

    @property
    def message_ttl_ms(self) -> int:
        return int(self.message_ttl_days * 86_400_000)

    @property
    def metrics_token(self) -> str | None:
        """The bearer token of ``/metrics`` (read from its file), if any."""
        return self.metrics_token_file.read_text().strip() if self.metrics_token_file else None

    @property
    def connection_cap(self) -> int:
        """``max_connections_per_account``, or its default of 3 times ``max_devices``."""
        return self.max_connections_per_account or 3 * self.max_devices

    @cached_property  # read per connection and per team change: derived once
    def authority_public_key(self) -> bytes | None:
        return decode_authority_key(self.authority_key) if self.authority_key else None

    @cached_property
    def rotation_statements(self) -> tuple[bytes, ...]:
        """The statements of ``authority_rotations`` (checked at load)."""
        return tuple(rotation.decode_text(t) for t in self.authority_rotations)

    @cached_property
    def authority_keys(self) -> rotation.AuthorityKeys | None:
        """``authority_key`` and the older keys of ``authority_rotations``
        with their ``until`` (each counts only up to it: the verifier asks
        :meth:`protocol.rotation.AuthorityKeys.valid_at`), or None."""
        current = self.authority_public_key
        if current is None:
            return None
        statements = self.rotation_statements
        if not statements:
            return rotation.AuthorityKeys(current)
        # now=0: keep every older key with its 'until'; verifiers compare it to the instant checked.
        return rotation.accept_chain(current, statements, 0)

    def _check_workers(self) -> None:
        """Several workers share only what several nodes share: each is a
        process of its own, so SQLite (one process owns its file) and the
        in-process broker (which reaches no other process) cannot serve them."""
        base = self.metrics_port_base
        if base is not None and base + self.workers - 1 > 65535:
            raise ValueError(f"metrics_port_base + {self.workers} workers - 1 must be at most 65535")
        if self.workers == 1:
            return
        wrong = []
        if not self.store.startswith(("postgresql://", "postgres://")):
            wrong.append(f"store is {self.store_display}: SQLite is owned by one process; use postgresql://")
        if not self.broker.startswith(("redis://", "rediss://")):
            wrong.append(f"broker is {self.broker_display}: it reaches no other process; use redis://")
        if wrong:
            raise ValueError(
                f"workers = {self.workers} needs the store and broker that several nodes share ("
                + "; ".join(wrong)
                + "); or set workers = 1, the embedded default"
            )

    def _check_rotations(self) -> None:
        """``authority_rotations`` must be a chain of valid statements ending
        at ``authority_key``; the ValueError names the first bad statement."""
        if not self.authority_rotations:
            return
        current = self.authority_public_key
        if current is None:
            raise ValueError("authority_rotations needs authority_key (the newest key of the chain)")
        if len(self.authority_rotations) > rotation.MAX_STATEMENTS:
            raise ValueError(f"authority_rotations: at most {rotation.MAX_STATEMENTS} statements")
        previous: rotation.Statement | None = None
        for i, text in enumerate(self.authority_rotations, 1):
            try:
                statement = rotation.verify(rotation.decode_text(text))
            except rotation.RotationError as exc:
                raise ValueError(f"authority_rotations statement {i} ({text[:16]}...): {exc}") from None
            if previous is not None and statement.old != previous.new:
                raise ValueError(
                    f"authority_rotations statement {i} ({text[:16]}...) does not follow statement {i - 1} "
                    "(its old key is not the previous statement's new key)"
                )
            previous = statement
        assert previous is not None
        if previous.new != current:
            raise ValueError(
                f"authority_rotations statement {len(self.authority_rotations)} hands over to "
                f"{encode_authority_key(previous.new)}, not to authority_key"
            )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration; raises ConfigError."""
    path = config_file or os.environ.get("MISS_CONFIG") or None
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    toml_path = Path(path) if path else None

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if toml_path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
            return tuple(sources)

    try:
        return _Sourced(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            label = f"{where} (MISS_{where.upper()})" if where else "settings"
            lines.append(f"  {label}: {err['msg']}")
        origin = f" (from {toml_path}, MISS_* variables and flags)" if toml_path else ""
        raise ConfigError("invalid configuration" + origin + ":\n" + "\n".join(lines)) from None
    except Exception as exc:  # unreadable TOML and the like
        where = f" file {toml_path}" if toml_path is not None else ""
        raise ConfigError(f"cannot read configuration{where}: {exc}") from None

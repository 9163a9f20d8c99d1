"""Prometheus metrics of one hub node, served at ``GET /metrics``.

Each :class:`Metrics` has its own registry, so several hubs can run in one
process (the tests do) without clashing. Labels never carry user or device
ids: cardinality stays fixed and metrics leak no one's activity.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("miss_connections", "Open WebSocket connections", registry=r)
        self.authenticated = Gauge("miss_authenticated_devices", "Authenticated connections", registry=r)
        self.frames = Counter("miss_frames_received_total", "Frames received, by type", ["type"], registry=r)
        self.accepted = Counter("miss_messages_accepted_total", "Messages durably accepted", registry=r)
        self.duplicates = Counter("miss_messages_duplicate_total", "Resends of an accepted id", registry=r)
        self.envelopes = Counter("miss_envelopes_stored_total", "Envelopes queued for devices", registry=r)
        self.deliveries = Counter("miss_frames_delivered_total", "deliver/delivered frames sent", registry=r)
        self.acks = Counter("miss_rows_acked_total", "Queued rows acked by devices", registry=r)
        self.node_lost_drains = Counter(
            "miss_node_lost_drains_total",
            "Drains of every local device because a node's presence entries expired (it died or stalled)",
            registry=r,
        )
        self.refusals = Counter(
            "miss_messages_refused_total", "Messages a recipient device refused (SPEC §6.5)", registry=r
        )
        self.team_changes = Counter("miss_team_changes_total", "Team records stored (SPEC §13)", registry=r)
        self.team_messages = Counter(
            "miss_team_messages_accepted_total", "Team messages durably accepted (one body each)", registry=r
        )
        self.urgent_messages = Counter(
            "miss_urgent_messages_total", "Urgent messages durably accepted (SPEC §14)", registry=r
        )
        self.escalation_steps = Counter(
            "miss_escalation_steps_total",
            "Escalation actions performed by this node, by kind (step, final, remind)",
            ["kind"],
            registry=r,
        )
        self.acknowledgements = Counter(
            "miss_acknowledgements_total", "First acknowledgements of urgent messages", registry=r
        )
        self.role_messages = Counter(
            "miss_role_messages_accepted_total", "Messages to an on-call role durably accepted", registry=r
        )
        self.recalled = Counter("miss_rows_recalled_total", "Undelivered rows deleted by recall", registry=r)
        self.pending_refused = Counter(
            "miss_pending_connections_refused_total",
            "Connections closed before their handshake: too many not yet authenticated, by scope",
            ["scope"],
            registry=r,
        )
        #: Its value is read from the gate (app.py sets the function).
        self.pending = Gauge("miss_pending_connections", "Connections not authenticated yet", registry=r)
        self.pending_closed = Counter(
            "miss_pending_connections_closed_total",
            "Connections that closed before authenticating, by the stage they reached: handshake "
            "(no whole HTTP request: handshake timeout or client gone), http (answered without a "
            "WebSocket), auth (no auth/enroll accepted)",
            ["stage"],
            registry=r,
        )
        self.errors = Counter("miss_errors_total", "Errors sent to peers, by code", ["code"], registry=r)
        self.enrollments = Counter("miss_enrollments_total", "Devices enrolled", registry=r)
        self.throttled = Counter(
            "miss_throttled_total", "Requests refused by a rate limit, by bucket", ["bucket"], registry=r
        )
        self.revoked = Counter(
            "miss_devices_revoked_total", "Devices revoked (all nodes' events)", registry=r
        )
        self.expired = Counter("miss_rows_expired_total", "Queued rows deleted at expiry", registry=r)
        self.blob_bytes_uploaded = Counter(
            "miss_blob_bytes_uploaded_total", "Attachment bytes (ciphertext) written by blob_put", registry=r
        )
        self.blob_bytes_downloaded = Counter(
            "miss_blob_bytes_downloaded_total",
            "Attachment bytes (ciphertext) served by GET /blobs/",
            registry=r,
        )
        self.blobs_stored = Counter(
            "miss_blobs_stored_total", "Uploads completed (blob_end: durable, usable in a send)", registry=r
        )
        self.blob_refused = Counter(
            "miss_blob_uploads_refused_total",
            "Blob requests refused, by reason (too_large, quota, offset, incomplete, unknown)",
            ["reason"],
            registry=r,
        )
        self.blob_downloads = Counter(
            "miss_blob_downloads_total", "GET /blobs/ answers, by HTTP status", ["status"], registry=r
        )
        self.blob_downloads_active = Gauge(
            "miss_blob_downloads_in_progress", "GET /blobs/ responses not yet sent and closed", registry=r
        )
        self.blobs_deleted = Counter(
            "miss_blobs_deleted_total", "Blobs deleted, by cause (expired, recalled)", ["cause"], registry=r
        )
        self.accept_seconds = Histogram(
            "miss_accept_seconds",
            "Time from a send frame to its durable acceptance",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )

        #: ``frames``' child of each frame type, which ``labels`` would look
        #: up again for every frame (a third of the counting's cost); the
        #: types are the protocol's, a closed set
        self._frames_by_type: dict[str, Any] = {}

    def frame_received(self, frame_type: str) -> None:
        """Count a frame of ``frame_type`` (a decoded frame's ``TYPE``)."""
        child = self._frames_by_type.get(frame_type)
        if child is None:
            child = self._frames_by_type[frame_type] = self.frames.labels(frame_type)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

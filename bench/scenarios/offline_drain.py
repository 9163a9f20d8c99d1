"""``offline-drain``: ``--messages`` messages (default 10,000) queued for one
offline device, which then connects.

The sender queues them (sealed, sent with up to 256 awaiting ``accepted``;
not measured) and goes offline, so the recipient's acks queue receipts for
it. Measured: from the recipient's ``auth`` to its last message opened
(``hub.drain_seconds``), the drain rate, and the hub CPU per message over
that window (acks included). The relay cannot hold messages; its baseline
is the same number of pre-sealed frames pushed through it to a connected
recipient as fast as the sender can write them."""

from __future__ import annotations

import time
from typing import Any

from ..runner import Population, Run
from ..stats import merge_samples
from .common import ratio

SETTLE_SECONDS = 0.5


def _wait_delivered(r: Run, n: int, label: str, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    r.progress.start(label, n, "msg")
    while time.monotonic() < deadline:
        delivered = sum(s.get("delivered", 0) for s in r.pool.statuses())
        r.progress.update(delivered)
        if delivered >= n:
            r.progress.finish()
            return True
        time.sleep(0.01)
    r.progress.finish("timed out")
    return False


def _figures(
    r: Run, origin_ns: int, cpu: dict[str, float], load: tuple[float, float | None], complete: bool
) -> dict[str, Any]:
    """The figures of a drain. ``load`` is the load generator's CPU seconds
    and the wall time they were spent in (None: the drain itself)."""
    samples = merge_samples(r.pool.call_all("collect"))
    last = max(samples.recv_ns, default=origin_ns)
    drain = (last - origin_ns) / 1e9
    lat = samples.latencies_us(origin_ns)
    out = r._figures(samples, lat, drain, cpu, load[0], origin_ns, [origin_ns] * len(lat))
    wall = load[1] if load[1] is not None else drain
    out["loadgen_cpu_util"] = round(load[0] / wall / max(1, len(r.load_cpus)), 3) if wall > 0 else None
    out["drain_seconds"] = round(drain, 3)
    out["complete"] = complete
    return out


def run(r: Run) -> dict[str, Any]:
    n = r.args.messages
    payload = r.args.payload
    pop = Population(len(r.pool))
    sender_user = pop.add_user(1, 0)
    recipient_user = pop.add_user(1, 0)
    sender, recipient = pop.user_devices[sender_user][0], pop.user_devices[recipient_user][0]
    pop.add_flow(sender, recipient_user)
    r.set_population(pop)

    relay = r.start_relay()
    r.connect(r.relay_urls(relay), "relay: connect")
    meters = r.meters([relay.pid], False)
    for m in meters.values():
        m.start()
    load0, wall0 = r.pool.cpu_seconds(), time.monotonic()
    blasts = [{"count": n if w == 0 else 0, "payload": payload} for w in range(len(r.pool))]
    r.pool.start_job("blast", blasts)
    complete = _wait_delivered(r, n, "relay: burst")
    blast = r.pool.finish_job()[0]
    cpu = r.stop_meters(meters)
    load = (r.pool.cpu_seconds() - load0, time.monotonic() - wall0)
    relay_res = _figures(r, blast["started_ns"], cpu, load, complete)
    r.disconnect()
    r.stop(relay)

    r.start_hubs(1)
    r.enroll()
    urls = r.hub_device_urls()
    r.connect(urls, "hub: sender connects", indices=[sender])
    r.progress.note(f"queueing {n} messages for the offline device")
    r.pool.start_job("blast", blasts)
    r.pool.finish_job()
    r.disconnect()
    r.pool.call_all("collect")

    meters = r.meters(r.hub_pids, r.using_services())
    for m in meters.values():
        m.start()
    load0 = r.pool.cpu_seconds()
    connected = r.connect(urls, "hub: recipient connects", indices=[recipient])
    complete = _wait_delivered(r, n, "hub: drain")
    time.sleep(SETTLE_SECONDS)  # its last acks reach the store inside the window
    cpu = r.stop_meters(meters)
    auth_sent = connected["timings"][0][1] if connected["timings"] else time.monotonic_ns()
    # The receiving client works only during the drain: its load over that.
    load = (r.pool.cpu_seconds() - load0, None)
    hub_res = _figures(r, auth_sent, cpu, load, complete)
    r.disconnect()
    return {
        "mode": "drain",
        "hub": hub_res,
        "relay": relay_res,
        "ratio_cpu": ratio(hub_res["cpu_us_per_msg"], relay_res["cpu_us_per_msg"]),
        "params": {"messages": n, "payload_bytes": payload},
    }

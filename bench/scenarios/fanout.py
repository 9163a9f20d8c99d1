"""``fanout``: one message, many devices.

Without ``--team``: one sender whose clinician has ``--own-devices``
devices, writing to a clinician with ``--devices`` devices. Each message is
sealed for every recipient device and for the sender's other devices; each
recipient device's ack yields a receipt on every device of the sender.
``delivered`` counts envelopes opened by their device (a message to 4
devices plus 2 own devices counts 6); the relay forwards the same frame to
the same 6 devices.

With ``--team N`` (SPEC §13): a care team of N clinicians with ``--devices``
devices each (default 2), created by its first member with signed records
(``create``, then one ``add`` per other member, each carrying the signer's
attestation) sent as ``team_change`` frames, outside any measured window.
The first member's first device then sends team messages: one ``send`` with
the plaintext sealed once (``seal_body``), a 72-byte wrap of its key for
every other device of the team, ``to`` the team and ``head`` the chain's
head. In the same run, on the same hub and connections, the same device
sends 1:1 messages of the nearest fan-out a 1:1 message can have: to one
clinician with min(32, (N - 1) * devices) devices (the hub's cap on a
clinician's devices is 32), plus its own other devices. Both count a
*delivered envelope* the same way: one ``deliver`` frame received, opened
and checked by a device; and both yield the same receipts per envelope (one
per recipient device's ack, on each device of the sender), so that the
ratio of hub CPU per delivered envelope, team ÷ 1:1, is the cost of what
the team path adds (chain head check, the target set from the chain, the
body stored once and joined to every row) rather than of a different
amount of fan-out. The bar: team ≤ 1.5 times 1:1.

Then, the others disconnected, the sender sends a few messages of each kind
(acked by nobody, so that every row is still stored) and the store is asked
what it holds for each (``Store.stored_bytes``): a team message must take
at most len(body) + 150 bytes per target device.
"""

from __future__ import annotations

import time
from typing import Any

from protocol import crypto, teams

from ..provision import attestations, stored_bytes
from ..runner import Population, Run
from .common import _phases, ratio

__all__ = ["CPU_BAR", "STORE_BYTES_PER_DEVICE", "plot_note", "run", "table"]

#: The issue's bars: hub CPU per delivered envelope, team ÷ 1:1 at most this...
CPU_BAR = 1.5
#: ... and bytes stored per team message at most len(body) + this per target device.
STORE_BYTES_PER_DEVICE = 150
#: The hub's cap on one clinician's devices (``max_devices`` ≤ 32): the largest 1:1 fan-out.
MAX_USER_DEVICES = 32
#: Messages of each kind sent, unacked, to measure what the store holds.
PROBE_MESSAGES = 5

BASELINE_TEXT = (
    "1:1 baseline: the same sending device, in the same run, writes to one clinician with "
    "{big} devices (+ its {own} own other device(s)): {one_env} envelopes per message against "
    "the team's {team_env}, and the same receipts per envelope (each recipient device's ack "
    "gives one receipt per device of the sender). Both count a delivered envelope as one "
    "deliver frame received and opened by a device."
)


def run(r: Run) -> dict[str, Any]:
    if r.args.team:
        return run_team(r)
    from .common import message_run

    devices = r.args.devices or 4
    pop = Population(len(r.pool))
    sender_user = pop.add_user(r.args.own_devices, 0)
    recipient = pop.add_user(devices, 0)
    pop.add_flow(pop.user_devices[sender_user][0], recipient)
    out = message_run(r, pop)
    out["params"] = {
        "recipient_devices": devices,
        "sender_devices": r.args.own_devices,
        "envelopes_per_message": devices + r.args.own_devices - 1,
        "payload_bytes": r.args.payload,
    }
    return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def create_team(r: Run, pop: Population, members: list[int]) -> tuple[str, bytes, dict[str, Any]]:
    """Create a team of the clinicians ``members`` on the hub, as its first
    member's first device would: records signed by that device, each with
    its clinician's attestation, checked locally (``apply_record``) and sent
    as ``team_change`` frames. Returns (team id, head, figures of the set-up)."""
    started = time.monotonic()
    users = r.hub_users
    creator = users[members[0]]
    index = pop.user_devices[members[0]][0]
    spec = pop.devices[index]
    keys = crypto.DeviceKeys(spec.sign_seed, spec.box_secret)
    device_id = r.directory[index].device_id
    att = attestations(r.store_url, [creator]).get(creator)
    if att is None:
        raise SystemExit("miss-bench: the team's creator has no attestation")
    authority_pk = bytes(r.authority.verify_key)
    team = teams.new_team_id()
    state: teams.TeamState | None = None
    records: list[tuple[bytes, bytes]] = []
    for k, member in enumerate(members):
        if k == 0:
            rec = teams.next_record(
                None,
                "create",
                creator,
                by=creator,
                at=_now_ms(),
                device=device_id,
                att=att,
                team=team,
                name="Équipe de garde (bench)",
            )
        else:
            rec = teams.next_record(
                state, "add", users[member], by=creator, at=_now_ms(), device=device_id, att=att
            )
        signed = teams.sign_record(rec, keys)
        state = teams.apply_record(state, signed, authority_pk, team=team)
        records.append((signed.rec, signed.sig))
    assert state is not None
    worker = pop.worker_of[index]
    r.progress.note(f"team {team}: sending {len(records)} signed records (create + {len(records) - 1} add)")
    results = r.pool.job(
        "team_change",
        [
            {"index": index, "team": team, "records": records if w == worker else []}
            for w in range(len(r.pool))
        ],
    )
    answer = results[worker]
    if answer["head"] != state.head:
        r.notes.append("the hub's head of the team differs from the head of the chain the bench signed")
    setup = {
        "records": len(records),
        "record_bytes_mean": round(sum(len(rec) + len(sig) for rec, sig in records) / len(records), 1),
        "team_change_ms_mean": round(answer["ns"] / 1e6 / len(records), 2),
        "seconds": round(time.monotonic() - started, 2),
    }
    r.progress.note(f"team {team}: {len(state.members)} members, team_ok seq {answer['seq']}")
    return team, answer["head"], setup


def _probe(r: Run, pop: Population, flow: Any, label: str) -> list[tuple[bytes, int, int]]:
    """Send PROBE_MESSAGES messages of ``flow`` (the sender alone online):
    their ids, body lengths and envelope (or wrap) lengths."""
    r.set_flows([flow])
    worker = pop.worker_of[flow.sender]
    r.progress.note(f"{label}: {PROBE_MESSAGES} messages left unacked, to measure the store")
    results = r.pool.job(
        "probe",
        [
            {"count": PROBE_MESSAGES if w == worker else 0, "payload": r.args.payload}
            for w in range(len(r.pool))
        ],
    )
    return list(results[worker])


def run_team(r: Run) -> dict[str, Any]:
    args = r.args
    n, per = args.team, args.devices or 2
    if n < 2:
        raise SystemExit("miss-bench: --team needs at least 2 members")
    if n * per > 512:
        raise SystemExit("miss-bench: a team message has at most 512 wraps (SPEC §13.4)")
    pop = Population(len(r.pool))
    # One worker holds the whole team: a flow and its targets stay in one process.
    members = [pop.add_user(per, 0) for _ in range(n)]
    big = min(MAX_USER_DEVICES, (n - 1) * per)
    recipient = pop.add_user(big, 0)
    sender = pop.user_devices[members[0]][0]
    team_flow = pop.add_team_flow(sender, 0, members)
    one_flow = pop.add_flow(sender, recipient)
    pop.flows = [one_flow]
    r.set_population(pop)
    r.start_hubs(1, max_devices=str(max(8, big)))
    r.enroll()
    r.set_teams({}, ("teams",))  # every connection names the capability (SPEC §13)
    r.connect(r.hub_device_urls(), "hub: connect")
    team_id, head, setup = create_team(r, pop, members)
    r.set_teams({0: (team_id, head)}, ("teams",))

    count = max(1, args.repeat)
    rounds: list[dict[str, Any]] = []
    for k in range(count):
        tag = f" {k + 1}/{count}" if count > 1 else ""
        r.set_flows([one_flow])
        one = _phases(r, f"hub 1:1{tag}", r.hub_pids, services=r.using_services())
        r.set_flows([team_flow])
        team = _phases(r, f"hub team{tag}", r.hub_pids, services=r.using_services(), profile=k == 0)
        main = "fixed" if "fixed" in team else "closed"
        rounds.append(
            {
                "main": main,
                "one": one,
                "team": team,
                "ratio": ratio(team[main]["cpu_us_per_msg"], one[main]["cpu_us_per_msg"]),
            }
        )
    ranked = sorted(rounds, key=lambda o: o["ratio"] if o["ratio"] is not None else float("inf"))
    chosen = ranked[(count - 1) // 2]
    main = chosen["main"]

    # What the store holds per message: the sender alone online, nothing acked.
    r.disconnect()
    r.connect(r.hub_device_urls(), "hub: the sender alone", indices=[sender])
    team_probe = _probe(r, pop, team_flow, "team")
    one_probe = _probe(r, pop, one_flow, "1:1")
    sender_user = r.hub_users[members[0]]
    team_stored = stored_bytes(r.store_url, sender_user, [m for m, _, _ in team_probe])
    one_stored = stored_bytes(r.store_url, sender_user, [m for m, _, _ in one_probe])
    r.disconnect()

    team_env, one_env = len(team_flow.targets), len(one_flow.targets)
    bounds = [b + STORE_BYTES_PER_DEVICE * team_env for _, b, _ in team_probe]
    hub_team, hub_one = chosen["team"][main], chosen["one"][main]
    cpu_ratio = chosen["ratio"]
    storage = {
        "messages": len(team_probe),
        "target_devices": team_env,
        "body_bytes_mean": _mean([b for _, b, _ in team_probe]),
        "wrap_bytes_per_device": round(team_probe[0][2] / team_env, 1) if team_probe else None,
        "stored_bytes_mean": _mean(team_stored),
        "stored_bytes_max": max(team_stored, default=None),
        "bound_bytes_mean": _mean(bounds),
        "stored_per_device_beyond_body_mean": _mean(
            [(s - b) / team_env for s, (_, b, _) in zip(team_stored, team_probe, strict=True)]
        ),
        "stored_over_bound_max": max(
            (round(s / lim, 3) for s, lim in zip(team_stored, bounds, strict=True)), default=None
        ),
        "within_bar": bool(team_stored) and all(s <= lim for s, lim in zip(team_stored, bounds, strict=True)),
        "one_to_one": {
            "messages": len(one_probe),
            "target_devices": one_env,
            "envelope_bytes_mean": _mean([e for _, _, e in one_probe]),
            "stored_bytes_mean": _mean(one_stored),
        },
    }
    out: dict[str, Any] = {
        "mode": hub_team["mode"],
        "unit": "delivered envelope",
        "hub": hub_team,
        "relay": {},
        "one_to_one": {"hub": hub_one},
        "ratio_cpu": None,
        "team": {
            "team": team_id,
            "members": n,
            "devices_per_member": per,
            "envelopes_per_message": team_env,
            "one_to_one_envelopes_per_message": one_env,
            "cpu_us_per_envelope": hub_team["cpu_us_per_msg"],
            "one_to_one_cpu_us_per_envelope": hub_one["cpu_us_per_msg"],
            "cpu_ratio": cpu_ratio,
            "cpu_bar": CPU_BAR,
            "cpu_within_bar": cpu_ratio is not None and cpu_ratio <= CPU_BAR,
            "storage": storage,
            "store_bar": f"len(body) + {STORE_BYTES_PER_DEVICE} bytes per target device",
            "setup": setup,
            "baseline": BASELINE_TEXT.format(big=big, own=per - 1, one_env=one_env, team_env=team_env),
        },
        "params": {
            "team_members": n,
            "devices_per_member": per,
            "one_to_one_recipient_devices": big,
            "payload_bytes": args.payload,
        },
    }
    if count > 1:
        out["rounds"] = [
            {
                "hub_cpu_us_per_msg": o["team"][o["main"]]["cpu_us_per_msg"],
                "relay_cpu_us_per_msg": o["one"][o["main"]]["cpu_us_per_msg"],
                "ratio_cpu": o["ratio"],
            }
            for o in rounds
        ]
    if main == "fixed" and "closed" in chosen["team"]:
        out["closed_loop"] = {
            "hub": chosen["team"]["closed"],
            "relay": chosen["one"]["closed"],
            "ratio_cpu": ratio(
                chosen["team"]["closed"]["cpu_us_per_msg"], chosen["one"]["closed"]["cpu_us_per_msg"]
            ),
        }
    return out


def _mean(values: list[int] | list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def table(report: dict[str, Any]) -> list[str]:
    """The team lines under the table: the two bars, met or not."""
    t = report.get("team")
    if not t:
        return []
    s = t["storage"]
    verdict = {True: "met", False: "NOT MET"}
    return [
        "",
        f"team of {t['members']} clinicians with {t['devices_per_member']} devices "
        f"({t['envelopes_per_message']} wraps per message) against 1:1 to "
        f"{t['one_to_one_envelopes_per_message']} devices, same run:",
        f"  hub CPU per delivered envelope: team {_fmt(t['cpu_us_per_envelope'])} µs, "
        f"1:1 {_fmt(t['one_to_one_cpu_us_per_envelope'])} µs, team ÷ 1:1 = {_fmt(t['cpu_ratio'])} "
        f"(bar ≤ {t['cpu_bar']:g}: {verdict[t['cpu_within_bar']]})",
        f"  stored per team message: {_fmt(s['stored_bytes_mean'])} bytes "
        f"(max {_fmt(s['stored_bytes_max'])}) "
        f"for a {_fmt(s['body_bytes_mean'])}-byte body and {s['target_devices']} devices; "
        f"bound {_fmt(s['bound_bytes_mean'])} (len(body) + {STORE_BYTES_PER_DEVICE} per device): "
        f"{verdict[s['within_bar']]}; {_fmt(s['stored_per_device_beyond_body_mean'])} bytes per device "
        "beyond the body",
        f"  stored per 1:1 message: {_fmt(s['one_to_one']['stored_bytes_mean'])} bytes "
        f"({s['one_to_one']['target_devices']} envelopes, {_fmt(s['one_to_one']['envelope_bytes_mean'])} "
        "bytes of envelopes)",
        f"  team set-up: {t['setup']['records']} records, {_fmt(t['setup']['team_change_ms_mean'])} ms "
        "each (team_change to team_ok)",
        f"  {t['baseline']}",
    ]


def plot_note(report: dict[str, Any]) -> str:
    """The figures of the bars, for the plot's title."""
    t = report["team"]
    s = t["storage"]
    return (
        f"CPU/envelope team ÷ 1:1 = {_fmt(t['cpu_ratio'])} (bar {t['cpu_bar']:g}); "
        f"stored/team msg {_fmt(s['stored_bytes_mean'])} B ≤ {_fmt(s['bound_bytes_mean'])} B: "
        f"{'yes' if s['within_bar'] else 'NO'}"
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f}" if isinstance(v, float) and abs(v) < 10 else f"{v:,}"

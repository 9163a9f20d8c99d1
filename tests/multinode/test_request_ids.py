"""Request ids in the logs follow a message across nodes (logs.py): a send
accepted on node 0 and delivered on node 1 is logged under the same id on
both, and every line a connection's tasks log names that connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from protocol.frames import Accepted, Deliver, Delivered, Lookup, LookupOk
from tests.support.cluster import running_cluster

pytestmark = pytest.mark.slow


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The hub's JSON log lines (anything else in the file fails the test)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_message_has_one_request_id_on_both_nodes(tmp_path: Path) -> None:
    async with running_cluster(
        tmp_path, extra_env={"MISS_LOG_FORMAT": "json", "MISS_LOG_LEVEL": "debug"}
    ) as cluster:
        alice = await cluster.enroll(0, "Dr Alice", "10000000001")
        bob = await cluster.enroll(1, "Dr Bob", "10000000002")
        lb, la = await alice.lookup(bob.user_id), await alice.lookup(alice.user_id)
        send = alice.message(lb, "suivi du patient", la)
        await alice.send_frame(send)
        assert await alice.recv() == Accepted(send.id)
        got = await bob.recv(timeout=10)
        assert isinstance(got, Deliver) and got.id == send.id
        await bob.ack(got.seq)
        receipt = await alice.recv(timeout=10)
        assert isinstance(receipt, Delivered) and receipt.id == send.id
        reply = await bob.ask(Lookup(rid=41, user=alice.user_id))
        assert isinstance(reply, LookupOk)
        await asyncio.sleep(0.3)  # let the nodes write their last lines
        node0, node1 = (json_lines(n.log_path) for n in cluster.nodes)

    req = send.id.hex()
    accepted = [r for r in node0 if r.get("req") == req and r["msg"] == "request"]
    assert len(accepted) == 1, accepted
    assert accepted[0]["type"] == "send" and accepted[0]["outcome"] == "ok"
    alice_conn = accepted[0]["conn"]
    delivered = [r for r in node1 if r.get("req") == req and r["msg"] == "row sent"]
    assert [r["device"] for r in delivered] == [bob.device_id], delivered
    bob_conn = delivered[0]["conn"]
    # The receipt goes back to Alice's connection, under the send's id too.
    receipts = [r for r in node0 if r.get("req") == req and r["msg"] == "row sent"]
    assert [(r["device"], r["conn"]) for r in receipts] == [(alice.device_id, alice_conn)], receipts
    print(f"request {req}: node 0 {len(accepted) + len(receipts)} lines, node 1 {len(delivered)} lines")

    # Each connection's lines name it, from authentication on; a request
    # other than a send is CONN.RID.
    assert any(
        r["msg"] == "authenticated" and r["device"] == bob.device_id
        for r in node1
        if r.get("conn") == bob_conn
    )
    lookups = [r for r in node1 if r.get("req") == f"{bob_conn}.41"]
    assert [(r["msg"], r["type"], r["outcome"]) for r in lookups] == [("request", "lookup", "ok")]
    assert alice_conn != bob_conn

"""The SDK never sends a frame string holding U+0000 (SPEC §3.1): the hub
closes such a connection with malformed_frame (4400), so what a user typed
is refused with ValueError before anything is sent, and the connection
goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from miss_client import Client, enroll
from miss_client.errors import BadRecipient
from miss_client.models import check_frame_text, is_user_id
from miss_client.profile import KDF_INTERACTIVE

from miss_server.app import HubServer
from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE
from tests.support.verified_hubs import AttestedFakeHub, ClinicianFactory

ALICE, BOB = "10000000001", "10000000002"


def test_check_frame_text() -> None:
    assert check_frame_text("Dr Bob", "a search") == "Dr Bob"
    assert check_frame_text("", "a label") == ""
    for text in ("\x00", "Dr\x00Bob", "Bob\x00"):
        with pytest.raises(ValueError, match=r"^a search must not contain U\+0000 \(NUL\)$"):
            check_frame_text(text, "a search")
    assert is_user_id("u_0123") and not is_user_id("u_01\x0023")


async def test_nul_typed_in_a_frame_string_is_refused_before_sending(
    hub: HubServer, clinician: ClinicianFactory
) -> None:
    alice = await clinician("alice", ALICE)
    await clinician("bob", BOB)
    async with Client.connect(alice) as a:
        with pytest.raises(ValueError, match="a search must not contain U"):
            await a.search("Dr\x00Bob")
        with pytest.raises(ValueError, match="a user id or RPPS number must not contain U"):
            await a.lookup(user="u_\x00")
        with pytest.raises(ValueError, match="a user id or RPPS number must not contain U"):
            await a.lookup(rpps=BOB + "\x00")
        with pytest.raises(BadRecipient):
            await a.resolve("u_\x00abc")
        with pytest.raises(BadRecipient):
            await a.watch(["u_\x00abc"])
        with pytest.raises(ValueError, match="a device id"):
            await a.revoke("d_\x00")
        with pytest.raises(ValueError, match="a role search must not contain U"):
            await a.roles.search("cardio\x00")
        with pytest.raises(ValueError, match="a team name must not contain U"):
            await a.create_team("Garde\x00")
        with pytest.raises(ValueError, match="an organisation must not contain U"):
            await a.create_team("Garde", org="CHRU\x00")
        # Nothing reached the hub: the connection is still open and answers.
        assert not a.closed
        assert [e.rpps for e in await a.search("Dr Bob")] == [BOB]
        assert not a.closed


async def test_enroll_refuses_nul_in_code_or_label_before_spending_the_code(tmp_path: Path) -> None:
    async with AttestedFakeHub() as fakehub:
        code = fakehub.invite(fakehub.add_user("Dr Y", "1"))
        kw = {"authority": AUTHORITY_PK, "kdf": KDF_INTERACTIVE}
        with pytest.raises(ValueError, match="a device label must not contain U"):
            await enroll(fakehub.url, code, tmp_path / "a", PASSPHRASE, "Pixel\x008", **kw)
        with pytest.raises(ValueError, match="an enrollment code must not contain U"):
            await enroll(fakehub.url, code + "\x00", tmp_path / "b", PASSPHRASE, "Pixel", **kw)
        assert code in fakehub.codes
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
        await enroll(fakehub.url, code, tmp_path / "c", PASSPHRASE, "Pixel 8", **kw)
        assert code not in fakehub.codes

"""Authority key rotation end to end (SPEC §15; issue 16, item 3): a real hub,
restarted on the same store, real SDK clients and the real ``miss-admin``
and ``miss-chat``.

Clinicians enrolled and attested under the old key keep messaging while the
operator rotates (``authority rotate``), restarts the hub with the new
settings and re-issues (``authority reissue``): their clients take the new
key from the statement the old key signed, with no re-enrollment, and during
the overlap a peer attested by either key verifies. A hub announcing a key
with a statement the profile's key did not sign is refused
(``rotation_refused``, WrongAuthority at enrollment) and the profile keeps
its key. ``authority retire`` counts what still depends on the old key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from pathlib import Path

import nacl.signing
import pytest
from miss_client import AuthorityRotated, Client, Message, RotationRefused, load_profile
from miss_client import enroll as sdk_enroll
from miss_client.chat import main as chat_main
from miss_client.errors import AuthorityMismatch
from miss_client.profile import KDF_INTERACTIVE
from miss_client.rotation import ACCEPTED_TEXT, REFUSED_TEXT

from miss_server import admin
from miss_server.app import HubServer
from miss_server.config import ConfigError
from protocol import attestation, rotation
from protocol.frame_base import CAP_ROTATION
from tests.support.authority import AUTHORITY, AUTHORITY_PK, AUTHORITY_TEXT, write_key_file
from tests.support.client_fixtures import PASSPHRASE
from tests.support.inprocess_hub import hub_settings
from tests.support.verified_hubs import enroll_clinician, verify_on
from tests.support.wire import invite

pytestmark = pytest.mark.slow


def miss_admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object], str]:
    """``miss-admin --json ARGS`` in a worker's event loop: (status, JSON, stderr)."""
    capsys.readouterr()
    code = admin.main(["--json", *args])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {}), out.err


#: Texts delivered by :func:`exchange` in the current test.
DELIVERED: list[str] = []


async def exchange(sender: Client, receiver: Client, recipient: str, text: str) -> None:
    """``sender`` sends ``text``; ``receiver`` gets exactly it (both verify each other)."""
    message_id = await sender.send(recipient, text)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for event in await receiver.drain(idle=0.3, limit=5):
            if isinstance(event, Message) and event.id == message_id:
                assert event.body == text
                DELIVERED.append(text)
                return
    raise AssertionError(f"{text!r} was not delivered")


async def test_clients_follow_a_rotation_and_keep_messaging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    DELIVERED.clear()
    store = f"sqlite:///{tmp_path}/miss.db"
    port = free_port()  # one address across restarts: the profiles hold it
    old_file = write_key_file(tmp_path / "old.key")
    new_file = tmp_path / "keys" / "new.key"
    monkeypatch.setenv("MISS_STORE", store)
    monkeypatch.setenv("MISS_AUTHORITY_KEY", AUTHORITY_TEXT)

    # 1. Under the old key: three clinicians enrolled and attested; two talk.
    async with HubServer(hub_settings(tmp_path, port=port)) as hub:
        alice = await enroll_clinician(hub, tmp_path / "alice", "alice", "10000000001")
        bob = await enroll_clinician(hub, tmp_path / "bob", "bob", "10000000002")
        carol = await enroll_clinician(hub, tmp_path / "carol", "carol", "10000000003")
        async with Client.connect(alice) as a, Client.connect(bob) as b:
            assert a.rotation is None and CAP_ROTATION not in a.hub_caps
            await exchange(a, b, bob.user_id, "avant la rotation")
            # A care team whose records the old key's attestations sign (SPEC §13.2).
            team = await a.create_team("Garde cardio")
            await a.add_member(team, "10000000002")
            await exchange(a, b, team, "équipe avant la rotation")
        _, carol_code = await invite(hub, "Dr Dave", "10000000004", verified=False)

    # 2. The operator rotates: a new key file, the statement, the two config lines.
    code, rotated, err = await asyncio.to_thread(
        miss_admin,
        capsys,
        "authority",
        "rotate",
        "--key-file",
        str(old_file),
        "--new-key-file",
        str(new_file),
        "--overlap-days",
        "30",
    )
    assert code == 0, err
    assert new_file.stat().st_mode & 0o777 == 0o600
    new_text = str(rotated["public_key"])
    new_pk = attestation.decode_authority_key(new_text)
    chain = [str(t) for t in rotated["authority_rotations"]]  # type: ignore[attr-defined]
    assert chain == [rotated["statement"]]
    statement = rotation.verify(rotation.decode_text(chain[0]))
    assert (statement.old, statement.new) == (AUTHORITY_PK, new_pk)
    assert statement.until - statement.at == 30 * 86_400_000
    # A chain that does not end at authority_key is refused at load, naming the statement.
    with pytest.raises(ConfigError, match="authority_rotations statement 1"):
        hub_settings(tmp_path, port=port, authority_rotations=chain)  # authority_key still the old one
    forged = bytearray(rotation.decode_text(chain[0]))
    forged[3] ^= 1
    with pytest.raises(ConfigError, match=r"statement 1.*signature"):
        hub_settings(
            tmp_path, authority_key=new_text, authority_rotations=[rotation.encode_text(bytes(forged))]
        )

    # 3. Restart with the new settings: clients follow, no re-enrollment.
    monkeypatch.setenv("MISS_AUTHORITY_KEY", new_text)
    monkeypatch.setenv("MISS_AUTHORITY_ROTATIONS", json.dumps(chain))
    new_key = nacl.signing.SigningKey(_seed(new_file))
    async with HubServer(
        hub_settings(tmp_path, port=port, authority_key=new_text, authority_rotations=chain)
    ) as hub:
        async with Client.connect(alice) as a, Client.connect(bob) as b:
            assert CAP_ROTATION in a.hub_caps
            for client in (a, b):
                assert isinstance(client.rotation, AuthorityRotated)
                assert client.rotation.current == new_pk
                assert client.rotation.previous == ((AUTHORITY_PK, statement.until),)
                assert client.rotation.text == ACCEPTED_TEXT.format(
                    fingerprint=attestation.authority_fingerprint(new_pk)
                )
            # Both still attested by the old key: they verify each other during the overlap.
            await exchange(a, b, bob.user_id, "pendant le recouvrement")
        # The profiles now hold the new key (persisted, sealed), and the old one until its end.
        for profile in (alice, bob):
            stored = load_profile(profile.directory, PASSPHRASE)
            assert stored.authority_pk == new_pk
            assert stored.authority_previous == (rotation.PreviousKey(AUTHORITY_PK, statement.until),)
        # One re-attested under the new key, the other not yet: both still verify.
        await verify_on(hub, alice.user_id, key=new_key)
        async with Client.connect(alice) as a, Client.connect(bob) as b:
            assert a.rotation is None and b.rotation is None  # followed once, not at every connection
            await exchange(b, a, alice.user_id, "Alice sous la nouvelle clé")
            await exchange(a, b, bob.user_id, "Bob encore sous l'ancienne")

            # The team chain signed under the old key still verifies; a new record by the
            # re-attested Alice (new key) extends it.
            await exchange(b, a, team, "équipe pendant le recouvrement")
            view = await a.add_member(team, "10000000003")
            assert len(view.members) == 3
            await exchange(a, b, team, "équipe à trois")

        # 4. retire says what still depends on the old key; reissue re-signs it.
        code, retire, _ = await asyncio.to_thread(
            miss_admin, capsys, "authority", "retire", "--statement", chain[0]
        )
        assert code == 1 and retire["remaining"] == 2  # bob, carol
        code, reissued, err = await asyncio.to_thread(
            miss_admin, capsys, "authority", "reissue", "--key-file", str(new_file)
        )
        assert code == 0, err
        assert sorted(reissued["reissued"]) == sorted([bob.user_id, carol.user_id])  # type: ignore[arg-type]
        assert reissued["already_current"] == 1
        code, retire, _ = await asyncio.to_thread(
            miss_admin, capsys, "authority", "retire", "--statement", chain[0]
        )
        assert code == 0 and retire["remaining"] == 0
        bob_att = await hub.store.get_user(bob.user_id)
        assert bob_att is not None and bob_att.attestation is not None
        attestation.check_signature(bob_att.attestation, new_pk)  # same identity, now under the new key
        async with Client.connect(alice) as a, Client.connect(bob) as b:
            await exchange(a, b, bob.user_id, "après la réémission")
            await exchange(b, a, team, "équipe après la réémission")
        print(f"rotation: {len(DELIVERED)} messages delivered across the rotation (one-to-one and team)")

        # 5. A clinician given the old key with their code enrolls here: the hub's key is
        #    checked against the chain, and the new profile trusts the new key at once.
        dave = await sdk_enroll(
            hub.url,
            carol_code,
            tmp_path / "dave",
            PASSPHRASE,
            "desk",
            authority=AUTHORITY_PK,
            kdf=KDF_INTERACTIVE,
        )
        assert dave.authority_pk == new_pk
        assert load_profile(dave.directory, PASSPHRASE).authority_previous == (
            rotation.PreviousKey(AUTHORITY_PK, statement.until),
        )

    # 6. A hub announcing a key with a statement some other key signed: refused, key kept.
    other = nacl.signing.SigningKey.generate()
    rogue = nacl.signing.SigningKey.generate()
    now = int(time.time() * 1000)
    bad_chain = [rotation.encode_text(rotation.sign(other, rogue, now, now + 86_400_000))]
    rogue_text = attestation.encode_authority_key(bytes(rogue.verify_key))
    monkeypatch.setenv("MISS_AUTHORITY_KEY", rogue_text)
    monkeypatch.setenv("MISS_AUTHORITY_ROTATIONS", json.dumps(bad_chain))
    async with HubServer(
        hub_settings(tmp_path, port=port, authority_key=rogue_text, authority_rotations=bad_chain)
    ) as hub:
        async with Client.connect(carol) as c:
            assert isinstance(c.rotation, RotationRefused)
            assert c.rotation.code == "rotation_refused" and c.rotation.text == REFUSED_TEXT
            assert c.rotation.announced == bytes(rogue.verify_key)
        assert load_profile(carol.directory, PASSPHRASE).authority_pk == AUTHORITY_PK
        _, code_text = await invite(hub, "Dr Eve", "10000000005", verified=False)
        with pytest.raises(AuthorityMismatch):
            await sdk_enroll(
                hub.url, code_text, tmp_path / "eve", PASSPHRASE, authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _seed(path: Path) -> bytes:
    """The seed in a key file of ``miss-admin authority init``/``rotate``."""
    return base64.b64decode(path.read_text().splitlines()[-1])


async def test_miss_chat_prints_the_rotation_notices_and_whoami_the_previous_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISS_PASSPHRASE", PASSPHRASE)
    port = free_port()
    new = nacl.signing.SigningKey.generate()
    new_pk = bytes(new.verify_key)
    now = int(time.time() * 1000)
    until = now + 7 * 86_400_000
    chain = [rotation.encode_text(rotation.sign(AUTHORITY, new, now, until))]
    async with HubServer(hub_settings(tmp_path, port=port)) as hub:
        alice = await enroll_clinician(hub, tmp_path / "alice", "alice", "10000000001")

    async def chat(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = await asyncio.to_thread(chat_main, ["--profile", str(alice.directory), *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    new_text = attestation.encode_authority_key(new_pk)
    async with HubServer(
        hub_settings(tmp_path, port=port, authority_key=new_text, authority_rotations=chain)
    ):
        rc, out, err = await chat("inbox")
        assert rc == 0, err
        fp = attestation.authority_fingerprint(new_pk)
        assert (
            "Clé de l'autorité de vérification renouvelée (empreinte " + fp + "), annoncée par l'ancienne clé"
            in err
        )
        rc, out, _ = await chat("whoami")
        assert f"authority {fp}" in out
        assert f"clé précédente {attestation.authority_fingerprint(AUTHORITY_PK)}, valable jusqu'au" in out

    other = nacl.signing.SigningKey.generate()
    rogue = nacl.signing.SigningKey.generate()
    rogue_text = attestation.encode_authority_key(bytes(rogue.verify_key))
    bad = [rotation.encode_text(rotation.sign(other, rogue, now, until))]
    async with HubServer(
        hub_settings(tmp_path, port=port, authority_key=rogue_text, authority_rotations=bad)
    ):
        rc, out, err = await chat("inbox")
        assert "Nouvelle clé d'autorité refusée : la déclaration n'est pas signée par la clé connue" in err
    assert load_profile(alice.directory, PASSPHRASE).authority_pk == new_pk


async def test_renew_re_signs_an_old_key_attestation_under_the_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new_file = tmp_path / "new.key"
    code, rotated, err = await asyncio.to_thread(
        miss_admin,
        capsys,
        "authority",
        "rotate",
        "--key-file",
        str(write_key_file(tmp_path / "old.key")),
        "--new-key-file",
        str(new_file),
    )
    assert code == 0, err
    chain = [str(t) for t in rotated["authority_rotations"]]  # type: ignore[attr-defined]
    new_pk = attestation.decode_authority_key(str(rotated["public_key"]))
    async with HubServer(hub_settings(tmp_path)) as hub:
        alice = await enroll_clinician(hub, tmp_path / "alice", "alice", "10000000001")
    monkeypatch.setenv("MISS_STORE", f"sqlite:///{tmp_path}/miss.db")
    monkeypatch.setenv("MISS_AUTHORITY_KEY", str(rotated["public_key"]))
    monkeypatch.setenv("MISS_AUTHORITY_ROTATIONS", json.dumps(chain))
    # The attestation (old key, a day left) is due: renew vouches again, under the new key.
    code, renewed, err = await asyncio.to_thread(
        miss_admin, capsys, "renew", "--within", "2", "--key-file", str(new_file)
    )
    assert code == 0, err
    async with HubServer(
        hub_settings(tmp_path, authority_key=str(rotated["public_key"]), authority_rotations=chain)
    ) as hub:
        user = await hub.store.get_user(alice.user_id)
        assert user is not None and user.attestation is not None
        attestation.check_signature(user.attestation, new_pk)
    assert [(r["user"], r["renewed"]) for r in renewed["results"]] == [(alice.user_id, True)]  # type: ignore[attr-defined]

"""Configuration: sources, validation messages, and the README reference."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from miss_server.config import ConfigError, Settings, load_settings
from tests.support.hubproc import BIN

README = Path(__file__).parents[2] / "README.md"


def test_defaults_are_the_embedded_hub_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MISS_CONFIG", "MISS_STORE", "MISS_BROKER", "MISS_PORT", "MISS_HOST"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert (s.host, s.port, s.store, s.broker) == (
        "127.0.0.1",
        8765,
        "sqlite:///miss-data/miss.db",
        "memory://",
    )


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "miss.toml"
    toml.write_text('port = 9001\nhost = "0.0.0.0"\nmessage_ttl_days = 7\n')
    monkeypatch.setenv("MISS_PORT", "9002")
    s = load_settings(toml)
    assert (s.port, s.host, s.message_ttl_days) == (9002, "0.0.0.0", 7)
    assert load_settings(toml, port=9003).port == 9003


def test_every_bad_setting_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('port = "eighty"\nstore = "mysql://x"\nbogus = 1\n')
    with pytest.raises(ConfigError) as err:
        load_settings(toml)
    message = str(err.value)
    for name in ("port", "store", "bogus", "MISS_PORT"):
        assert name in message


def test_miss_server_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(BIN / "miss-server"), "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "port" in out.stderr and "Traceback" not in out.stderr


def _server(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "miss-server"), *args], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )


def test_miss_server_says_which_file_and_store_it_could_not_use(tmp_path: Path) -> None:
    """TOML errors named no file; an unwritable store path
    gave a bare errno."""
    toml = tmp_path / "hub.toml"
    toml.write_text("port = \n")
    out = _server(tmp_path, "--config", str(toml))
    assert out.returncode == 2 and str(toml) in out.stderr and "Traceback" not in out.stderr
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    out = _server(tmp_path, "--port", "0", "--store", f"sqlite:///{blocker}/miss.db")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "cannot start" in out.stderr and str(blocker) in out.stderr


def test_every_command_tells_its_version() -> None:
    for command in ("miss-server", "miss-admin", "miss-chat", "miss-bench"):
        out = subprocess.run([str(BIN / command), "--version"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.startswith(f"{command} 0."), (command, out)


def test_store_password_is_not_displayed() -> None:
    s = load_settings(store="postgresql://miss:s3cret@db.internal:5432/miss")
    assert "s3cret" not in s.store_display and "db.internal" in s.store_display


def test_readme_documents_every_setting() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert set(Settings.model_fields) <= documented, set(Settings.model_fields) - documented


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("authority_key", "not base64!", "not base64"),
        ("authority_key", "AAAA", "32-byte"),
        ("rate_device", "fast", "COUNT/s"),
        ("rate_failed_auth", "10/day", "COUNT/s"),
        ("max_envelopes", 65, "less than or equal to 64"),
    ],
)
def test_bad_security_settings_are_refused_clearly(key: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**{key: value})
    assert key in str(err.value) and says in str(err.value)


def test_workers_need_the_shared_store_and_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MISS_CONFIG", "MISS_STORE", "MISS_BROKER", "MISS_WORKERS", "MISS_METRICS_PORT_BASE"):
        monkeypatch.delenv(var, raising=False)
    shared = {"store": "postgresql://miss@db/miss", "broker": "redis://redis:6379/0"}
    assert load_settings(workers=4, **shared).workers == 4
    assert load_settings().workers == 1  # the embedded default: one process
    with pytest.raises(ConfigError) as refused:
        load_settings(workers=2, store=shared["store"])  # the in-process broker reaches no other worker
    assert "workers = 2 needs the store and broker that several nodes share" in str(refused.value)
    assert "broker is memory://" in str(refused.value) and "store is" not in str(refused.value)
    with pytest.raises(ConfigError, match="metrics_port_base"):
        load_settings(workers=4, metrics_port_base=65533, **shared)


def test_the_postgresql_pool_size_reaches_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """``store_pool_size`` bounds the node's PostgreSQL connections (the
    pool is opened by the store, so this reads what it was given)."""
    from miss_server.app import build_store
    from miss_server.store.postgres import PostgresStore

    monkeypatch.delenv("MISS_CONFIG", raising=False)
    monkeypatch.setenv("MISS_STORE_POOL_SIZE", "40")
    store = build_store(load_settings(store="postgresql://miss@db/miss"))
    assert isinstance(store, PostgresStore) and store._db._pool_max == 40
    monkeypatch.setenv("MISS_STORE_POOL_SIZE", "1")
    with pytest.raises(ConfigError, match="store_pool_size"):
        load_settings(store="postgresql://miss@db/miss")

"""The README's production runbook, run as written.

The ``sh`` block of the section "Production: …" is taken verbatim from
README.md and run with ``bash -euo pipefail`` (and ``-x``, whose trace tells
which output came from which command) in a copy of the repository's files
(what a fresh clone holds), with its variables pointing at a database, a role
and a Redis prefix of its own, temporary directories and free ports. It
takes about 15 s.
Two real ``miss-server`` nodes, PostgreSQL, Redis and nginx: a missing nginx
(or PostgreSQL, Redis, openssl, curl, jq) fails the test, never skips it;
``.ci/run`` installs nginx.

Whatever happens, the hubs and nginx are stopped and the database, the role
and the Redis keys are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.hubproc import BIN

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"^## Production\b.*$", re.M)
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)
TOOLS_PATH = os.pathsep.join([str(BIN), os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
POSTGRES = "psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1".split()
REDIS_URL = "redis://127.0.0.1:6379/0"


def runbook() -> str:
    """The one ``sh`` block of the README's production section, verbatim."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    heading = SECTION.search(readme)
    assert heading, "README.md has no '## Production' section"
    rest = readme[heading.end() :]
    section = rest[: m.start()] if (m := re.search(r"^## ", rest, re.M)) else rest
    blocks = SH_BLOCK.findall(section)
    assert len(blocks) == 1, f"the production section should hold one ```sh block, not {len(blocks)}"
    return str(blocks[0])


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked and new (not ignored) files: what a clone of
    this working tree holds, without its venv, var/ or caches."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def free_ports(count: int) -> list[int]:
    """Distinct ports nothing listens on now, on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        ports = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    for port in ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken"
    return ports


def require_tools() -> None:
    needed = ("bash", "psql", "openssl", "curl", "jq", "git")
    missing = [tool for tool in needed if not shutil.which(tool, path=TOOLS_PATH)]
    if not shutil.which("nginx", path=TOOLS_PATH):
        pytest.fail(
            "nginx is not installed: the README's production runbook needs it "
            "(apt-get install -y nginx; .ci/run installs it when missing)"
        )
    if missing:
        pytest.fail(f"the README's production runbook needs {', '.join(missing)}, not found on PATH")
    ready = subprocess.run([*POSTGRES, "-Atc", "SELECT 1"], capture_output=True, text=True)
    if ready.returncode != 0:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 (user postgres) does not answer: {ready.stderr.strip()}")
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} does not answer: {exc}")


def outputs_of(transcript: str, command: str) -> list[str]:
    """What each run of the command matching the regex ``command`` printed
    (stdout and stderr), from a ``bash -x`` transcript."""
    found = []
    lines = transcript.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("+ ") and re.search(command, line):
            out = []
            for later in lines[i + 1 :]:
                if later.startswith("+"):
                    break
                out.append(later)
            found.append("\n".join(out))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped: its parent bash is gone) is not running.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def stopped(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def closed(ports: list[int], timeout: float) -> bool:
    """Whether nothing accepts connections on ``ports`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        listening = []
        for port in ports:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    listening.append(port)
        if not listening:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def pids_in(run_dir: Path) -> list[int]:
    """The hubs' and nginx's process ids, as the runbook noted them."""
    pids = []
    for name in ("hub1.pid", "hub2.pid", "nginx/nginx.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int((run_dir / name).read_text().split()[0]))
    return pids


@contextlib.contextmanager
def cleaned_up(run_dir: Path, tag: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Whatever the runbook left running or created, gone afterwards."""
    shells: list[subprocess.Popen[bytes]] = []
    try:
        yield shells
    finally:
        pids = pids_in(run_dir)
        for shell in shells:  # the hubs run in the shell's process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not stopped(pids, 10):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for shell in shells:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
        subprocess.run(
            [
                *POSTGRES,
                "-c",
                f'DROP DATABASE IF EXISTS "{tag}" WITH (FORCE)',
                "-c",
                f'DROP ROLE IF EXISTS "{tag}"',
            ],
            capture_output=True,
            timeout=30,
        )
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{tag}*", count=1000))
        if keys:
            client.delete(*keys)


def test_production_runbook_runs_as_written(tmp_path: Path) -> None:
    require_tools()
    block = runbook()
    work = fresh_copy(tmp_path / "clone")
    run_dir = tmp_path / "var"
    secure = tmp_path / "secure"  # does not exist yet: `authority init` makes it
    tag = "miss_test_" + secrets.token_hex(4)
    hub1, hub2, proxy = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISS_") and k != "SSL_CERT_FILE"}
    env.update(
        PATH=TOOLS_PATH,
        SECURE_DIR=str(secure),
        RUN_DIR=str(run_dir),
        DB_NAME=tag,
        DB_ROLE=tag,
        REDIS_PREFIX=tag,
        HUB1_PORT=str(hub1),
        HUB2_PORT=str(hub2),
        PROXY_PORT=str(proxy),
    )
    script = tmp_path / "runbook.sh"
    script.write_text(block, encoding="utf-8")
    transcript_path = tmp_path / "transcript.txt"

    def logs() -> str:
        parts = [f"--- transcript (bash -x)\n{transcript_path.read_text(errors='replace')}"]
        for name in ("hub1.log", "hub2.log", "nginx/error.log"):
            if (run_dir / name).exists():
                parts.append(f"--- {name}\n{(run_dir / name).read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    started = time.monotonic()
    with cleaned_up(run_dir, tag) as shells, transcript_path.open("wb") as transcript:
        shell = subprocess.Popen(
            ["bash", "-x", "-euo", "pipefail", str(script)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=transcript,
            stderr=subprocess.STDOUT,  # one file: each command's output follows its trace line
            start_new_session=True,
        )
        shells.append(shell)
        try:
            status = shell.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the runbook did not finish in 120 s\n{logs()}")
        took = time.monotonic() - started
        print(f"the production runbook ran in {took:.1f} s")
        assert status == 0, f"the runbook failed (exit {status})\n{logs()}"
        text = transcript_path.read_text(encoding="utf-8")

        # The health check through nginx and TLS answers ok.
        (health,) = outputs_of(text, rf"curl .*https://localhost:{proxy}/healthz")
        assert health.strip() == "ok", logs()
        # The browser client's page, fetched through nginx and TLS, is the
        # bundle whose hash miss-admin web-hash prints (pipelines interleave
        # their trace lines, so the two outputs are found by their shapes).
        published = re.findall(r"^sha256:([0-9a-f]{64})$", text, re.MULTILINE)
        served = re.findall(r"^([0-9a-f]{64})  -$", text, re.MULTILINE)
        assert published and published == served, logs()
        # Bob's inbox, read through the proxy, shows Alice's message under her name.
        (inbox,) = outputs_of(text, r"miss-chat --profile \S+/bob inbox")
        assert "Dr Alice Martin (10000000001): Bonjour, un avis sur l'ECG de Mme D. ?" in inbox, logs()
        # Alice sees Bob's status.
        (presence,) = outputs_of(text, r"miss-chat --profile \S+/alice presence 10000000002")
        assert re.search(r"Dr Bob Durand \(10000000002\) is \w+ \(on call\)", presence), logs()
        # The authority key stayed with the administrators, private, in the
        # directory `authority init` made for it.
        assert secure.stat().st_mode & 0o777 == 0o700
        assert (secure / "miss-authority.key").stat().st_mode & 0o777 == 0o600
        # Step 9 stopped the proxy and both hubs: nothing listens on their ports any more.
        assert closed([hub1, hub2, proxy], 15), f"still listening after step 9\n{logs()}"

        # The store, read afterwards by an administrator: both clinicians are
        # verified, and the audit log says so.
        store_env = {**env, "MISS_STORE": f"postgresql://{tag}@127.0.0.1:5432/{tag}"}

        def admin(*args: str) -> dict[str, Any]:
            out = subprocess.run(
                [str(BIN / "miss-admin"), "--json", *args],
                cwd=work,
                env=store_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, f"miss-admin {' '.join(args)}: {out.stderr}"
            result: dict[str, Any] = json.loads(out.stdout)
            return result

        users = {u["rpps"]: u for u in admin("users")["users"]}
        alice, bob = users["10000000001"], users["10000000002"]
        assert alice["standing"] == bob["standing"] == "verified", users
        verified = [e["user"] for e in admin("audit", "--action", "account.verified")["events"]]
        assert sorted(verified) == sorted([alice["user"], bob["user"]]), verified

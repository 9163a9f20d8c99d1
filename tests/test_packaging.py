"""Packaging (issue 16, item 4): the Dockerfile, deploy/compose.yaml and its
nginx-compose.conf, deploy/miss.service and deploy/grafana-dashboard.json.

No container engine runs where the tests run (`docker` is only a client), so
the image is never built here; what can be checked without one is:

- the Dockerfile statically (every COPY source exists and is not excluded by
  .dockerignore, bases pinned by tag, a non-root USER, exec form only), and
  the Python package built from exactly the files it copies carries the web
  bundle and the migrations;
- the compose file through Debian's `docker-compose config` (1.29, which
  parses without an engine): services, users, health checks, start order,
  secrets; each hub's environment is a valid hub configuration; the proxy's
  configuration passes `nginx -t`; the health-check commands answer against
  a real hub;
- the systemd unit through `systemd-analyze verify`;
- the dashboard: every series its queries name is in a real hub's /metrics.

The tools (docker-compose, nginx, systemd-analyze) are required: a missing
one fails the test, never skips it (.ci/run installs docker-compose and nginx).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from miss_server.__main__ import EXIT_SLACK
from miss_server.app import HubServer
from miss_server.config import Settings, load_settings
from tests.support.authority import AUTHORITY_TEXT
from tests.support.web_client import installed_web_client
from tests.support.wire import RawDevice

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "miss.service"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
HUBS = ("hub1", "hub2")
#: What `systemctl stop` / `docker stop` must wait longer than before they
#: SIGKILL: the longest miss-server takes to exit after SIGTERM, the default
#: shutdown_grace_seconds plus the slack it gives itself (__main__.py).
GRACE_SECONDS = float(Settings.model_fields["shutdown_grace_seconds"].default) + EXIT_SLACK


def tool(name: str, why: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed: {why}")
    return path


def seconds(text: str) -> float:
    """A duration as compose ("1m30s", "30s") or systemd ("30s", "90") writes it."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|us|h|m|s|)", text.strip())
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * units[u] for n, u in parts)


# --- Dockerfile ----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """Each build stage: (its FROM arguments, its instructions)."""
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for word, args in dockerfile():
        if word == "FROM":
            result.append((args, []))
        else:
            assert result, f"{word} before the first FROM"
            result[-1][1].append((word, args))
    return result


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; fails on the shell form."""
    assert args.startswith("["), f"shell form (a shell would run it): {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerignore() -> list[tuple[bool, str]]:
    """.dockerignore's rules in order: (is an exception "!", pattern)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").strip("/")))
    return rules


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule for one pattern: Go's filepath.Match per path element,
    ``**`` any number of elements; a match of a directory covers all below."""
    pat = pattern.split("/")
    parts = path.split("/")

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return True  # the pattern named this path or one of its directories
        if pat[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatchcase(parts[j], pat[i]) and match(i + 1, j + 1)

    return match(0, 0)


def ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    verdict = False
    for negate, pattern in rules:
        if _matches(pattern, path):
            verdict = not negate
    return verdict


def context_files(source: str, rules: list[tuple[bool, str]]) -> list[Path]:
    """The files of the build context under ``source`` that reach the engine."""
    base = ROOT / source
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    return [p for p in files if not ignored(p.relative_to(ROOT).as_posix(), rules)]


def copies() -> list[tuple[str, list[str], str]]:
    """Every COPY: (its --from stage or "", sources, destination)."""
    found = []
    for _, instructions in stages():
        for word, args in instructions:
            if word == "COPY":
                words = shlex.split(args)
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), "")
                found.append((origin, paths[:-1], paths[-1]))
    return found


def test_the_dockerfile_builds_from_pinned_bases_in_stages() -> None:
    built = stages()
    assert len(built) >= 2, "a multi-stage build: the web bundle's stage, then the runtime"
    names = []
    for args, _ in built:
        words = args.split()
        image = words[0]
        assert ":" in image.rsplit("/", 1)[-1], f"FROM {image}: pin the base by tag"
        assert not image.endswith(":latest"), f"FROM {image}: pin the base by a version tag"
        names.append(words[2] if len(words) == 3 and words[1].upper() == "AS" else "")
    assert built[0][0].startswith("node:"), "the first stage checks the web bundle with Node.js"
    runtime = built[-1][0].split()[0]
    assert runtime.startswith("python:3.11-slim"), runtime
    # The runtime takes the checked bundle from the node stage: with BuildKit,
    # a stage nothing copies from is never built, and its check never runs.
    froms = {origin for origin, _, _ in copies() if origin}
    assert names[0] in froms, f"nothing COPYs --from={names[0]}: its check would be skipped"
    web_instructions = built[0][1]
    runs = [exec_form(args) for word, args in web_instructions if word == "RUN"]
    assert ["npm", "run", "check"] in runs, runs


def test_every_copy_source_exists_and_reaches_the_engine() -> None:
    rules = dockerignore()
    checked = 0
    for origin, sources, dest in copies():
        if origin:
            continue
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source} {dest}: no such file in the repository"
            rel = PurePosixPath(source.rstrip("/")).as_posix()
            assert not ignored(rel, rules), f"COPY {source}: .dockerignore excludes it"
            assert context_files(source, rules), f"COPY {source}: .dockerignore leaves nothing of it"
            checked += 1
    print(f"{checked} COPY sources exist and reach the engine")
    assert checked >= 5
    # What must never reach the engine: secrets, local state, dependencies.
    for leaked in (
        ".venv/bin/python",
        "clients/web/node_modules/x",
        "deploy/secrets/pgpass",
        "miss-data/miss.db",
        ".git/config",
        "var/tls/key.pem",
        "miss_server/__pycache__/app.cpython-311.pyc",
    ):
        assert ignored(leaked, rules), f".dockerignore lets {leaked} through"


def test_the_image_runs_the_hub_as_a_fixed_non_root_user_without_a_shell() -> None:
    runtime = stages()[-1][1]
    words = [word for word, _ in runtime]
    for word, args in runtime:
        if word in ("RUN", "ENTRYPOINT", "CMD"):
            exec_form(args)
    users = [args for word, args in runtime if word == "USER"]
    assert users, "no USER: the hub would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: a fixed, non-root uid"
    runs = [exec_form(args) for word, args in runtime if word == "RUN"]
    useradd = next(r for r in runs if r[0] == "useradd")
    assert useradd[useradd.index("--uid") + 1] == uid, "USER is the uid useradd created"
    assert ["pip", "install", "--no-cache-dir", "."] in runs
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "USER after every RUN"
    assert exec_form(dict(runtime)["ENTRYPOINT"]) == ["miss-server"]
    assert dict(runtime)["EXPOSE"].split() == ["8765"]
    assert exec_form(dict(runtime)["VOLUME"]) == ["/var/lib/miss"]
    env = " ".join(args for word, args in runtime if word == "ENV")
    assert "MISS_CONFIG=/etc/miss/miss.toml" in env
    config = [(src, dest) for origin, srcs, dest in copies() if not origin for src in srcs]
    assert ("deploy/container.toml", "/etc/miss/miss.toml") in config
    health = dict(runtime)["HEALTHCHECK"]
    assert "/healthz" in health and "curl" not in health


def test_the_images_configuration_file_is_a_valid_hub_configuration(tmp_path: Path) -> None:
    settings = load_settings(DEPLOY / "container.toml")
    assert settings.host == "0.0.0.0" and settings.port == 8765
    assert settings.store == "sqlite:////var/lib/miss/miss.db", "the store is on the image's volume"


def _healthcheck_code(args: str) -> list[str]:
    words = args.split()
    return exec_form(" ".join(words[words.index("CMD") + 1 :]))


@pytest.mark.slow
async def test_the_images_health_check_answers_for_a_running_hub_only(hub: HubServer) -> None:
    """The HEALTHCHECK command itself, run against a real hub's port."""
    command = _healthcheck_code(dict(stages()[-1][1])["HEALTHCHECK"])
    assert command[0] == "python"
    run = [sys.executable, *command[1:]]

    def status(port: int) -> int:
        env = {**os.environ, "MISS_PORT": str(port)}
        return subprocess.run(run, env=env, capture_output=True, timeout=30).returncode

    assert await asyncio.to_thread(status, hub.port) == 0
    closed = hub.port
    await hub.stop()
    assert await asyncio.to_thread(status, closed) != 0


@pytest.mark.slow
def test_the_web_stage_checks_the_bundle_with_only_the_files_it_copies(tmp_path: Path) -> None:
    """The node stage, replayed in a scratch root: its COPYs (after
    .dockerignore) and its RUNs but `npm ci`, which needs the npm registry:
    the checkout's node_modules, installed by the same `npm ci` from the
    same lock file (tests/web/test_bundle.py), stands in for it."""
    npm = tool("npm", "the web stage runs `npm run check` (Node.js 20)")
    rules = dockerignore()
    root = tmp_path / "stage"
    workdir = "/"
    runs: list[list[str]] = []
    for word, args in stages()[0][1]:
        if word == "WORKDIR":
            workdir = args
        elif word == "COPY":
            *sources, dest = shlex.split(args)
            target_dir = root / PurePosixPath(workdir, dest).as_posix().lstrip("/")
            for source in sources:
                base = ROOT / source
                for path in context_files(source, rules):
                    rel = path.relative_to(base) if base.is_dir() else Path(path.name)
                    (target_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target_dir / rel)
        elif word == "RUN":
            runs.append(exec_form(args))
    assert runs[0][:2] == ["npm", "ci"], runs
    modules = installed_web_client() / "node_modules"
    cwd = root / workdir.lstrip("/")
    (cwd / "node_modules").symlink_to(modules)
    for command in runs[1:]:
        assert command[0] == "npm", command
        out = subprocess.run([npm, *command[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{command}: {out.stdout}{out.stderr}"
        print(out.stdout.strip())


@pytest.mark.slow
def test_the_package_built_from_the_docker_context_carries_the_web_bundle(tmp_path: Path) -> None:
    """Copy what the runtime stage COPYs (after .dockerignore), build the
    wheel pip would install from it, and look inside: the hub's browser
    client (miss_server/static), the migrations, every module and the commands."""
    rules = dockerignore()
    context = tmp_path / "context"
    for origin, sources, dest in copies():
        for source in sources:
            if origin:  # the node stage's checked bundle: the committed one
                assert source.startswith("/src/"), source
                source = source.removeprefix("/src/")
            elif dest.startswith("/"):
                continue  # not into the source tree (the image's miss.toml)
            for path in context_files(source, rules):
                target = context / path.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "w"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "w").glob("miss-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        static = sorted(p.name for p in (ROOT / "miss_server" / "static").iterdir() if p.is_file())
        for name in static:
            assert (
                z.read(f"miss_server/static/{name}") == (ROOT / "miss_server/static" / name).read_bytes()
            ), name
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {"index.html", "app.js", "app.css"} <= set(static)
    for dialect in ("sqlite", "postgres"):
        assert any(
            n.startswith(f"miss_server/store/migrations/{dialect}/") and n.endswith(".sql") for n in names
        )
    # Every module of the installed packages, so that a package missing from
    # pyproject.toml's list fails here and not at the hub's first import.
    sources = {"protocol": "protocol", "miss_server": "miss_server", "miss_client": "clients/miss_client"}
    for package, directory in sources.items():
        for module in (ROOT / directory).rglob("*.py"):
            if not (module.parent / "__init__.py").exists():
                continue  # a script beside the package (protocol/vectors' generators)
            installed = f"{package}/{module.relative_to(ROOT / directory).as_posix()}"
            assert installed in names, f"{installed} is not in the wheel (pyproject.toml's packages)"
    assert "miss-server = miss_server.__main__:main" in entry_points
    assert "miss-admin = miss_server.admin:main" in entry_points
    print(f"wheel {wheel.name}: {len(names)} files, web bundle {', '.join(static)}")


# --- compose -------------------------------------------------------------------


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = tool(
        "docker-compose",
        "`docker-compose config` parses deploy/compose.yaml (apt-get install docker-compose)",
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
    return subprocess.run(
        [exe, "-f", str(COMPOSE), "config"], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config`'s resolved model (anchors merged, paths made
    absolute), read with the YAML library docker-compose itself uses."""
    out = compose_config({"MISS_AUTHORITY_KEY": AUTHORITY_TEXT})
    assert out.returncode == 0, out.stderr
    # Debian's docker-compose runs on the system Python with python3-yaml.
    with open(tool("docker-compose", "")) as f:
        interpreter = f.readline().removeprefix("#!").strip().split()[0]
    parsed = subprocess.run(
        [interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=out.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert parsed.returncode == 0, parsed.stderr
    model: dict[str, Any] = json.loads(parsed.stdout)
    return model


@pytest.mark.slow
def test_compose_refuses_to_start_without_the_authority_key() -> None:
    out = compose_config({})
    assert out.returncode != 0
    assert "MISS_AUTHORITY_KEY" in out.stderr


@pytest.mark.slow
def test_compose_has_two_hubs_postgresql_redis_a_proxy_and_a_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", *HUBS, "proxy"}
    assert services["postgres"]["image"].split(":")[1].startswith("15")
    assert services["redis"]["image"].split(":")[1].startswith("7")
    assert services["proxy"]["image"].startswith("nginx:")
    image = services["migrate"]["image"]
    assert all(services[h]["image"] == image for h in HUBS), "both hubs run the image migrate builds"
    build = services["migrate"]["build"]
    assert Path(build["context"]) == ROOT and build["dockerfile"] == "Dockerfile"
    assert services["migrate"]["entrypoint"] == ["miss-admin", "migrate"]
    assert services["migrate"]["restart"] == "no", "a one-shot step"
    for name, service in services.items():
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        ports = service.get("ports", [])
        assert not ports or name == "proxy", f"{name} publishes {ports}: only the proxy faces the network"
    assert [p["target"] for p in services["proxy"]["ports"]] == [8443]
    assert compose["networks"]["backend"].get("internal") is True
    for name in ("postgres", "redis", *HUBS, "migrate"):
        assert list(services[name]["networks"]) == ["backend"], name


@pytest.mark.slow
def test_compose_runs_the_hubs_as_non_root_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (*HUBS, "migrate"):
        service = services[name]
        uid = service["user"].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{name} runs as {service['user']}"
        assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service["ulimits"]["nofile"]["soft"] >= 65536, name
    for name in ("postgres", "redis", *HUBS, "proxy"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
    for name in HUBS:
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), "load balancing follows /readyz"
        assert seconds(services[name]["stop_grace_period"]) > GRACE_SECONDS, (
            f"{name}: docker stop must wait longer than shutdown_grace_seconds ({GRACE_SECONDS} s)"
        )


@pytest.mark.slow
def test_compose_starts_in_order(compose: dict[str, Any]) -> None:
    """postgres healthy -> migrate done -> hubs ready -> proxy."""
    services = compose["services"]
    healthy = {"condition": "service_healthy"}
    assert services["migrate"]["depends_on"] == {"postgres": healthy}
    for name in HUBS:
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": healthy,
            "redis": healthy,
        }
    assert services["proxy"]["depends_on"] == {h: healthy for h in HUBS}


@pytest.mark.slow
def test_compose_holds_no_secret(compose: dict[str, Any]) -> None:
    """Passwords, the metrics token and the TLS key are secret files outside
    git; nothing secret is in an environment variable or a URL."""
    secrets = compose["secrets"]
    assert {"pgpass", "metrics_token", "tls_cert", "tls_key", "postgres_password"} <= set(secrets)
    for name, secret in secrets.items():
        path = Path(secret["file"])
        assert path.parent == DEPLOY / "secrets", f"secret {name} outside deploy/secrets/"
        rel = path.relative_to(ROOT).as_posix()
        check = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT, timeout=30)
        assert check.returncode == 0, f"{rel} is not ignored by git"
        assert ignored(rel, dockerignore()), f"{rel} would reach the image's build context"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if (
                re.search(r"PASSWORD|SECRET|TOKEN|KEY$", key) and key != "MISS_AUTHORITY_KEY"
            ):  # that one is public
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (
                    f"{name}: {key}={value}"
                )
            if isinstance(value, str) and "://" in value:
                assert urlsplit(value).password is None, f"{name}: a password in {key}"
    mounted = {s["source"] for s in compose["services"]["proxy"]["secrets"]}
    assert mounted == {"tls_cert", "tls_key"}


@pytest.mark.slow
def test_each_hubs_environment_is_a_valid_configuration(compose: dict[str, Any], tmp_path: Path) -> None:
    """The hubs' MISS_* variables over the image's miss.toml, as the hub
    reads them (secret files replaced by local ones)."""
    token = tmp_path / "metrics_token"
    token.write_text("a-metrics-token-of-32-characters\n")
    for name in (*HUBS, "migrate"):
        env = compose["services"][name]["environment"]
        mounted = {s["source"] for s in compose["services"][name]["secrets"]}
        assert env["MISS_METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token" and "metrics_token" in mounted
        assert env["PGPASSFILE"] == "/run/secrets/pgpass" and "pgpass" in mounted
        overrides = {k.removeprefix("MISS_").lower(): v for k, v in env.items() if k.startswith("MISS_")}
        overrides["metrics_token_file"] = str(token)
        settings = load_settings(DEPLOY / "container.toml", **overrides)
        assert settings.store.startswith("postgresql://") and settings.broker.startswith("redis://")
        assert settings.host == "0.0.0.0" and settings.authority_key == AUTHORITY_TEXT
        assert settings.trust_forwarded_for, "behind the proxy: clients' addresses from X-Forwarded-For"


@pytest.mark.slow
async def test_the_hubs_compose_health_check_follows_readiness(
    compose: dict[str, Any], hub: HubServer
) -> None:
    """hub1's health check command, against a real hub on its port."""
    test = compose["services"]["hub1"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3].replace("127.0.0.1:8765", f"127.0.0.1:{hub.port}")
    assert code != test[3], "the check names the hub's port 8765"

    def status() -> int:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode

    assert await asyncio.to_thread(status) == 0, "a ready hub is healthy"
    await hub.stop()
    assert await asyncio.to_thread(status) != 0, "a stopped hub is not"


@pytest.mark.slow
def test_the_proxys_configuration_passes_nginx_t(compose: dict[str, Any], tmp_path: Path) -> None:
    nginx = tool("nginx", "`nginx -t` checks deploy/nginx-compose.conf (.ci/run installs nginx)")
    proxy = compose["services"]["proxy"]
    (mount,) = proxy["volumes"]
    source, target = mount.split(":")[:2]
    assert Path(source) == DEPLOY / "nginx-compose.conf" and target == "/etc/nginx/nginx.conf"
    conf = Path(source).read_text()
    assert "hub1:8765" in conf and "hub2:8765" in conf and "listen 8443 ssl" in conf
    # The proxy's own health check reaches nginx's loopback listener.
    port = re.search(r"127\.0\.0\.1:(\d+)/healthz", " ".join(proxy["healthcheck"]["test"]))
    assert port and f"listen 127.0.0.1:{port.group(1)};" in conf
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # Names only Docker's DNS knows, and the secrets' mount points, made local.
    local = (
        conf.replace("hub1:8765", "127.0.0.1:1")
        .replace("hub2:8765", "127.0.0.1:2")
        .replace("/run/secrets/tls_cert", str(tmp_path / "cert.pem"))
        .replace("/run/secrets/tls_key", str(tmp_path / "key.pem"))
        .replace("pid /tmp/nginx.pid", f"pid {tmp_path}/nginx.pid")
    )
    (tmp_path / "nginx.conf").write_text(local)
    out = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr


# --- systemd -------------------------------------------------------------------


def verify_unit(
    tmp_path: Path, unit_text: str, with_executable: bool = True
) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of ``unit_text`` installed as the unit's header
    says (/etc/systemd/system/miss.service), in an alternate root that holds
    the system's own units and, at the documented ExecStart path, the
    miss-server console script pip installed into this checkout's venv."""
    analyze = tool("systemd-analyze", "it checks deploy/miss.service (Debian package systemd)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/miss.service").write_text(unit_text)
    exec_start = re.search(r"^ExecStart=(\S+)", unit_text, re.M)
    assert exec_start, "no ExecStart"
    if with_executable:
        script = Path(sys.executable).parent / "miss-server"
        assert script.is_file(), f"{script}: `pip install -e .` installs the command"
        target = root / exec_start.group(1).lstrip("/")
        target.parent.mkdir(parents=True)
        shutil.copy2(script, target)
        # The very script, runnable: it is the hub's entry point, not a placeholder.
        version = subprocess.run([str(target), "--version"], capture_output=True, text=True, timeout=60)
        assert version.returncode == 0 and version.stdout.startswith("miss-server "), version
    return subprocess.run(
        [analyze, "verify", f"--root={root}", "/etc/systemd/system/miss.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    out = verify_unit(tmp_path, UNIT.read_text())
    print(f"systemd-analyze verify: exit {out.returncode}, output {out.stdout + out.stderr!r}")
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


@pytest.mark.slow
def test_systemd_analyze_verify_catches_what_it_should(tmp_path: Path) -> None:
    """The check above can fail: without the executable, or with a bad value."""
    missing = verify_unit(tmp_path / "a", UNIT.read_text(), with_executable=False)
    assert missing.returncode != 0 and "is not executable" in missing.stderr, missing.stderr
    bad = verify_unit(
        tmp_path / "b", UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=sometimes")
    )
    assert "ProtectSystem" in bad.stderr or "protect system" in bad.stderr, bad.stderr


def unit_settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_is_hardened() -> None:
    unit = unit_settings()
    one = {k: v[-1] for k, v in unit.items()}
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one.get(key) == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["ReadWritePaths"] == "/var/lib/miss"
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert one["SystemCallFilter"] == "@system-service"
    assert one.get("DynamicUser") == "yes" or (one.get("User") not in (None, "", "root", "0"))
    assert int(one["LimitNOFILE"]) >= 65536, "one descriptor per connection"
    assert one["KillSignal"] == "SIGTERM" and one["Restart"] == "on-failure"
    assert seconds(one["TimeoutStopSec"]) > GRACE_SECONDS, "systemd must not SIGKILL a draining hub"
    assert one["ExecStart"].startswith("/") and one["ExecStart"].endswith("/miss-server")


# --- the Grafana dashboard -------------------------------------------------------

#: Labels Prometheus adds to every scraped series (not in the hub's output).
TARGET_LABELS = {"instance", "job"}
_NOT_METRICS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(board["panels"])
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            queries.append(re.sub(r"^label_values\((\w+),.*\)$", r"\1", var["definition"]))
    return queries


def series_in(expr: str) -> tuple[set[str], set[str]]:
    """The metric names a PromQL expression reads, and the label names it uses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", " ".join(re.findall(r"\{([^}]*)\}", text))))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels |= {w.strip() for w in group.split(",") if w.strip()}
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", text):
        if text[m.end() :].lstrip().startswith("(") or m.group() in _NOT_METRICS:
            continue  # a function or an aggregation
        names.add(m.group())
    return names, labels


def test_series_in_reads_promql() -> None:
    assert series_in('sum by (code) (rate(miss_errors_total{instance=~"$i"}[5m]))') == (
        {"miss_errors_total"},
        {"code", "instance"},
    )
    assert series_in("histogram_quantile(0.99, sum by (le) (rate(miss_accept_seconds_bucket[5m])))") == (
        {"miss_accept_seconds_bucket"},
        {"le"},
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        body: bytes = answer.read()
        return body


async def test_every_series_of_the_dashboard_is_in_a_real_hubs_metrics(hub: HubServer) -> None:
    # Some traffic first, so that labelled series have samples to show their labels.
    intruder = RawDevice(hub.url, device_id="d_0000000000000000")
    error, _ = await intruder.auth_refused()
    assert error is not None
    text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{hub.port}/metrics")
    exported: dict[str, set[str]] = {}  # sample name -> its labels
    families: dict[str, str] = {}  # sample name -> family name, for families still without samples
    for family in text_string_to_metric_families(text.decode()):
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_count", "_sum", "_created"],
            "gauge": [""],
        }.get(family.type, [""])
        for suffix in suffixes:
            families[family.name + suffix] = family.name
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    queries = dashboard_queries()
    used: set[str] = set()
    labelled = 0
    for expr in queries:
        names, labels = series_in(expr)
        assert names, f"no series in {expr!r}"
        for name in names:
            assert name in families or name in exported, f"{name} (in {expr!r}) is not in the hub's /metrics"
            used.add(name)
        if len(names) == 1 and (name := next(iter(names))) in exported and exported[name]:
            unknown = labels - exported[name] - TARGET_LABELS
            assert not unknown, f"{expr!r} uses labels {unknown} that {name} does not have"
            labelled += bool(labels - TARGET_LABELS)
    print(
        f"{len(queries)} dashboard queries over {len(used)} series, all exported: {', '.join(sorted(used))}; "
        f"{labelled} queries' labels checked against samples"
    )
    assert {
        "miss_connections",
        "miss_ready",
        "miss_frames_received_total",
        "miss_errors_total",
        "miss_accept_seconds_bucket",
        "miss_throttled_total",
        "miss_pending_connections_refused_total",
    } <= used


def test_the_dashboard_is_importable_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            walk(panel.get("panels", []))

    walk(board["panels"])
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    assert any(v["type"] == "datasource" and v["name"] == "datasource" for v in board["templating"]["list"])

# MiSS hub image: one hub node (miss-server), miss-admin beside it.
#
#   docker build -t miss:0.1.0 .
#   docker run -d -p 8765:8765 -v miss-data:/var/lib/miss \
#     -e MISS_AUTHORITY_KEY=<public key> miss:0.1.0
#
# Configuration: MISS_* environment variables, or a TOML file mounted over
# /etc/miss/miss.toml (the image's own, deploy/container.toml, listens on
# 0.0.0.0:8765 and keeps the embedded store in /var/lib/miss). A MISS_*
# variable wins over the file. Production with PostgreSQL, Redis, two nodes
# and a TLS proxy: deploy/compose.yaml; docs/OPERATIONS.md, "Install".
#
# tests/test_packaging.py checks this file statically (no container engine
# runs where the tests run): every COPY source exists and is not excluded by
# .dockerignore, the bases are pinned by tag, the runtime user is not root.

# --- 1. The browser client ------------------------------------------------
# The bundle the hub serves (miss_server/static/) is committed, so nothing is
# built here: this stage rebuilds it from clients/web/ and its lock file and
# fails the build unless the committed bundle is byte for byte what the
# sources give (`npm run check`, as tests/web/test_bundle.py does). The
# runtime stage takes the checked bundle from here, so this stage always runs.
FROM node:20.19-bookworm-slim AS web
WORKDIR /src/clients/web
COPY clients/web/package.json clients/web/package-lock.json ./
RUN ["npm", "ci", "--no-audit", "--no-fund"]
COPY clients/web/ ./
COPY miss_server/static/ /src/miss_server/static/
RUN ["npm", "run", "check"]

# --- 2. The hub -----------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The sources pip installs from (pyproject.toml's packages and package data;
# README.md is the package's long description). They stay in the image,
# owned by root, read-only to the hub.
WORKDIR /usr/src/miss
COPY pyproject.toml README.md ./
COPY protocol/ protocol/
COPY miss_server/ miss_server/
COPY clients/miss_client/ clients/miss_client/
COPY clients/miss_adt/ clients/miss_adt/
COPY bench/ bench/
COPY --from=web /src/miss_server/static/ miss_server/static/
RUN ["pip", "install", "--no-cache-dir", "."]

# A fixed uid and gid, so that a volume or a mounted secret can be given to
# them from the host (chown 10001:10001). No login shell, no home of its own
# but the data directory.
RUN ["groupadd", "--system", "--gid", "10001", "miss"]
RUN ["useradd", "--system", "--uid", "10001", "--gid", "miss", "--no-create-home", \
     "--home-dir", "/var/lib/miss", "--shell", "/usr/sbin/nologin", "miss"]
RUN ["install", "-d", "-o", "miss", "-g", "miss", "-m", "0700", "/var/lib/miss"]

COPY deploy/container.toml /etc/miss/miss.toml
ENV MISS_CONFIG=/etc/miss/miss.toml

# The embedded store (SQLite) lives here; with PostgreSQL nothing does.
VOLUME ["/var/lib/miss"]
WORKDIR /var/lib/miss
USER 10001:10001
EXPOSE 8765

# Liveness: /healthz answers while the process serves (slim has no curl).
# MISS_PORT, when set, moves the port; load balancers check /readyz instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MISS_PORT', '8765') + '/healthz', timeout=4)"]

# SIGTERM starts the graceful shutdown (clients told to reconnect elsewhere,
# in-flight commits finished) within shutdown_grace_seconds (20 s by
# default): give `docker stop` more (-t 30; compose.yaml's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["miss-server"]

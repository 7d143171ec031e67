# syntax=docker/dockerfile:1
# One image for every paystep process: `paystep worker`, `paystep webhook`, and the
# one-off commands (`paystep deploy`, `paystep pay`, `paystep reconcile`).
#
#   podman build -t paystep .      (or docker build)
#   podman run --read-only --tmpfs /tmp paystep webhook
#
# Only `python` from PATH is used, never a fixed interpreter path, so any Debian-based
# Python 3.11 image with venv support can stand in for the base under the same name.
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
# A venv at a fixed path: the final stage copies it whole and gets no build tools.
RUN python -m venv /opt/paystep
ENV PATH=/opt/paystep/bin:$PATH
WORKDIR /src

# The locked dependencies first, in their own layer: it changes only with the lock.
# Hashes make a tampered or swapped distribution fail the build; wheels only, so no
# compiler is ever needed, here or later.
COPY requirements.lock ./
RUN pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock

# The project itself, without resolving anything again: the lock is the whole set.
COPY pyproject.toml README.md ./
COPY paystep_common ./paystep_common
COPY statemachine ./statemachine
COPY worker ./worker
COPY webhook ./webhook
COPY paystep ./paystep
RUN pip install --no-deps . \
    && pip check \
    && pip uninstall --yes pip setuptools

FROM python:3.11-slim
LABEL org.opencontainers.image.title="paystep" \
      org.opencontainers.image.description="Payments on AWS Step Functions and Stripe: SQS worker and Stripe webhook" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed UID/GID, the same numbers the Kubernetes securityContext asks for.
RUN groupadd --gid 10001 paystep \
    && useradd --uid 10001 --gid paystep --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin paystep

COPY --from=builder /opt/paystep /opt/paystep

# Read-only root filesystem: no bytecode written at run time (pip compiled it at build),
# HOME and temporary files in /tmp, which is the one writable mount.
ENV PATH=/opt/paystep/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    TMPDIR=/tmp

USER 10001:10001
# 8080: the webhook's public port. 9090: metrics and probes of both services.
EXPOSE 8080 9090

# Both services answer /healthz on the metrics port; urlopen raises (exit 1) on
# anything but a 2xx. Kubernetes uses its own probes instead (deploy/k8s).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PAYSTEP_METRICS_PORT', '9090'), timeout=4)"]

ENTRYPOINT ["paystep"]
CMD ["--help"]

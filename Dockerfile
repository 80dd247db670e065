# One image for every mesh node: `mesh helper`, `mesh ai`, `mesh notifier` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MESH_DATA_DIR=/var/lib/mesh

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mesh ./mesh
COPY discovery ./discovery
COPY nodes ./nodes
RUN pip install . && rm -rf /src
COPY deploy/docker/healthcheck.py /usr/local/lib/mesh/healthcheck.py

# Journals and alert positions live in /var/lib/mesh; a named volume mounted there starts
# owned by the unprivileged user below.
RUN useradd --system --uid 10001 --home-dir /var/lib/mesh mesh \
    && mkdir -p /var/lib/mesh /keys && chown mesh /var/lib/mesh /keys && chmod 0700 /keys
USER mesh
WORKDIR /var/lib/mesh

# Healthy while the node answers on its metrics port (--metrics-port; /healthz for `mesh http`);
# a node without one is checked for running only. deploy/docker/healthcheck.py says more.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/mesh/healthcheck.py"]

ENTRYPOINT ["mesh"]
CMD ["--help"]

# radnode container image: one image, every process role.
#
#   docker build -t radnode .
#   docker run -p 11112:11112 -p 8080:8080 -v radnode-data:/data radnode          # embedded: serve
#   docker run ... radnode scp | api | worker                                      # scale-out roles
#
# docker-compose.yml and k8s/base run the scale-out roles from this image;
# docs/deployment.md describes each of them.

# -- build: a virtual environment with radnode and its dependencies ------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/radnode
ENV PATH=/opt/radnode/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that editing the code does not
# reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The packages pyproject.toml installs ([tool.setuptools.packages.find] include).
COPY radnode ./radnode
COPY dimse_scp ./dimse_scp
COPY dicomweb ./dicomweb
COPY ai_node ./ai_node
COPY pacs_link ./pacs_link
COPY viewer_plugin ./viewer_plugin
RUN pip install --no-deps . && radnode --version

# -- runtime: the environment, a non-root user, nothing else -----------------------
FROM python:3.11-slim

RUN groupadd --system --gid 10001 radnode \
    && useradd --system --uid 10001 --gid radnode --home-dir /home/radnode --create-home \
       --shell /usr/sbin/nologin radnode \
    && mkdir -p /data \
    && chown radnode:radnode /data

COPY --from=build /opt/radnode /opt/radnode

ENV PATH=/opt/radnode/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RADNODE_DATA_DIR=/data \
    RADNODE_HOST=0.0.0.0

USER 10001:10001
WORKDIR /home/radnode
VOLUME /data

# DICOM (Settings.dicom_port) and HTTP (Settings.http_port) defaults.
EXPOSE 11112 8080

# For the roles that serve HTTP (serve, api). slim has no curl; compose and k8s
# replace this check for scp (TCP connect) and worker (none).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RADNODE_HTTP_PORT', '8080'), timeout=4)" || exit 1

ENTRYPOINT ["radnode"]
CMD ["serve"]

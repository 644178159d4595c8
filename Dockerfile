# radnode container images: one image for every process role, and the OHIF viewer.
#
#   docker build -t radnode:0.1.0 .                                   # the last stage: radnode
#   docker build --target ohif -t radnode-ohif:0.1.0 .                # OHIF + radnode's config
#   docker run -p 11112:11112 -p 8080:8080 -v radnode-data:/data radnode:0.1.0    # embedded: serve
#   docker run ... radnode:0.1.0 scp | api | worker                                # scale-out roles
#
# docker-compose.yml and k8s/ run the scale-out roles from these images (tag = the
# version in pyproject.toml); docs/deployment.md describes each of them.

# -- build: a virtual environment with radnode and its dependencies ------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/radnode
ENV PATH=/opt/radnode/bin:$PATH
WORKDIR /src

# Dependencies first, from the lock alone (`make lock`: the pins `make install` installs,
# less the test extra; the same pip), so that editing the code does not reinstall TensorFlow.
COPY pyproject.toml README.md requirements-runtime.lock ./
RUN pip install pip==26.3 \
    && pip install --require-hashes -r requirements-runtime.lock

# The packages pyproject.toml installs ([tool.setuptools.packages.find] include).
COPY radnode ./radnode
COPY radnode_core ./radnode_core
COPY dimse_scp ./dimse_scp
COPY dicomweb ./dicomweb
COPY ai_node ./ai_node
COPY pacs_link ./pacs_link
COPY viewer_plugin ./viewer_plugin
RUN pip install --no-deps --no-build-isolation . && radnode --version

# -- the prebuilt OHIF viewer: npm @ohif/app at the Makefile's OHIF_VERSION, checked
# against the registry's sha512 integrity (npm view @ohif/app@VERSION dist.integrity).
FROM python:3.11-slim AS ohif-dist
ARG OHIF_VERSION=3.13.2
ARG OHIF_SHA512=WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
WORKDIR /ohif
RUN python -c "import base64, hashlib, os, urllib.request; data = urllib.request.urlopen('https://registry.npmjs.org/@ohif/app/-/app-%s.tgz' % os.environ['OHIF_VERSION'], timeout=600).read(); digest = base64.b64encode(hashlib.sha512(data).digest()).decode(); assert digest == os.environ['OHIF_SHA512'], 'sha512 mismatch: ' + digest; open('ohif.tgz', 'wb').write(data)" \
    && tar xzf ohif.tgz && rm ohif.tgz && test -f package/dist/index.html

# -- radnode-ohif (--target ohif): `radnode viewer`, OHIF at /viewer/ with radnode's
# app-config.js and /viewer/dicom-web/ proxied to radnode's HTTP edge (reads only, with
# the signed-in user's token). Pass --upstream and --frame-ancestors (docker-compose.yml).
FROM python:3.11-slim AS ohif
RUN groupadd --system --gid 10001 radnode \
    && useradd --system --uid 10001 --gid radnode --no-create-home --shell /usr/sbin/nologin radnode
COPY --from=build /opt/radnode /opt/radnode
COPY --from=ohif-dist /ohif/package/dist /opt/ohif/dist
ENV PATH=/opt/radnode/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RADNODE_HOST=0.0.0.0
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/viewer/app-config.js' % os.environ.get('RADNODE_OHIF_PORT', '3000'), timeout=4)" || exit 1
ENTRYPOINT ["radnode", "viewer", "--dist", "/opt/ohif/dist"]

# -- radnode (the default target, the last stage): the environment, a non-root user,
# nothing else.
FROM python:3.11-slim AS radnode

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

# Surety: the inference server with its ai.surety kernels and the default models.
#
#   make image                                   # caches, then docker build (scripts/docker/)
#   docker run --rm -p 8000:8000 surety:latest   # or --network host where there is no bridge
#
# Python packages come from a wheelhouse in the build context (build/docker/wheels/, made by
# scripts/docker/wheelhouse.sh from the locks in requirements/, which it copies beside the
# wheels), installed with their hashes checked, so the build needs no package index; apt
# needs Debian's mirror. BASE_IMAGE is any Debian trixie image: debian:trixie-slim, or the
# local surety-base:trixie that scripts/docker/base_image.sh makes where no registry answers.
ARG BASE_IMAGE=debian:trixie-slim

# --- builder: compiles the kernels and builds the project wheel ---------------------------------
FROM ${BASE_IMAGE} AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# libonnxruntime-dev: the ORT C/C++ API headers the kernels are compiled against
# (/usr/include/onnxruntime, which kernels/CMakeLists.txt looks for first). Versions are those
# of the trixie release the base image tracks, not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ libonnxruntime-dev python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

COPY build/docker/wheels /wheels
# The build backend and its tools ([build-system].requires), for a build without isolation:
# an isolated build would try to reach the index for them.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-index --find-links /wheels --require-hashes \
       -r /wheels/build.lock

WORKDIR /src
COPY pyproject.toml CMakeLists.txt README.md ./
COPY kernels kernels
COPY service service
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-index --find-links /wheels \
       --require-hashes -r /wheels/serving.lock \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-index --no-deps \
       /dist/surety_serving-*.whl \
    && /opt/venv/bin/python -I -c 'import onnxruntime as ort; from surety_serving import kernels; \
ort.SessionOptions().register_custom_ops_library(kernels.library_path()); \
print("ai.surety kernels load into onnxruntime", ort.__version__, "ISA here:", kernels.isa())'

# --- runtime: python3, the venv, the models; no compiler, no pip, no torch ----------------------
FROM ${BASE_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The venv's interpreter is a link to /usr/bin/python3, which is why both stages share one base.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/surety \
       --shell /usr/sbin/nologin surety

# Built beforehand by `surety build-defaults` (torch is needed for that, not for serving);
# mount another repository over /models to serve it instead. Before the venv: the models change
# less often than the code, and each layer below a change is rebuilt.
COPY model_repository /models
# The venv holds the project wheel and [project].dependencies only: the serving stack.
COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SURETY_HOST=0.0.0.0 \
    SURETY_PORT=8000 \
    SURETY_MODEL_REPOSITORY=/models

USER 10001:10001
WORKDIR /home/surety
EXPOSE 8000

# Ready, not just live: 503 while models load, while draining after SIGTERM, or with a model
# that failed to load. Python's urllib, so the image needs no curl; it follows SURETY_PORT.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('SURETY_PORT', '8000'), timeout=2)"]

# Exec form: the server is PID 1 and gets SIGTERM itself, drains (SURETY_DRAIN_S) and exits 0
# within SURETY_SHUTDOWN_TIMEOUT_S; give `docker stop` / the orchestrator a grace period above
# that (e.g. `docker run --stop-timeout 35`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["surety"]
CMD ["serve"]

# Last, so that a new revision rebuilds no layer above. No build date: it would make every
# build a new image (the engine records the creation time anyway, `docker inspect`).
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="surety" \
      org.opencontainers.image.description="Inference serving for ONNX models with per-request uncertainty" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

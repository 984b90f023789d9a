# The image the rendered Kubernetes manifests name (kubernetes.image, default
# ghcr.io/xlib/xlib-pipeline-worker:0.1.0): the Dask scheduler, the workers
# (`xlib-pipeline worker`) and the driver Job (`xlib-pipeline run /app/FILE`).
#
#   docker build -t ghcr.io/xlib/xlib-pipeline-worker:0.1.0 --build-arg PIPELINES=flows .
#
# PIPELINES is the folder (in the build context) holding your pipeline files; it is
# copied to /app, where the driver Job looks for the FILE given to `render kubernetes`.
# Two stages: the first builds a virtual environment from this checkout (core and every
# plugin), the second holds that environment and the pipeline files only: no compiler,
# no package manager cache, a non-root user. Both start from the same pinned base.

FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY plugins ./plugins
# Pure-Python packages: wheels are built and installed without a compiler. The venv is
# byte-compiled here so workers start without compiling anything.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile . ./plugins/*/ \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/xlib-pipeline plugins

FROM python:3.11.7-slim-bookworm AS runtime
ARG PIPELINES=examples
LABEL org.opencontainers.image.title="xlib-pipeline" \
      org.opencontainers.image.description="xlib-pipeline driver, Dask scheduler and worker" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XLIB_PIPELINE_HOME=/var/lib/xlib-pipeline
RUN groupadd --system --gid 10001 xlib \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/xlib-pipeline \
       --no-create-home --shell /usr/sbin/nologin xlib \
    && mkdir -p /var/lib/xlib-pipeline /app \
    && chown 10001:10001 /var/lib/xlib-pipeline
COPY --from=build /opt/venv /opt/venv
COPY ${PIPELINES}/ /app/
WORKDIR /app
USER 10001:10001
# 8080 worker /health and /metrics, 8786 Dask scheduler, 8787 dashboard, 8788 Dask worker
EXPOSE 8080 8786 8787 8788
ENTRYPOINT []
CMD ["xlib-pipeline", "--help"]

# One image, two commands: `squeezer api` (default) and `squeezer worker`.
# CUDA runtime base so the worker uses the GPU that compose reserves; the API runs the same image on CPU.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    SQUEEZER_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml ./
RUN mkdir -p core api worker store cli && touch core/__init__.py api/__init__.py worker/__init__.py store/__init__.py cli/__init__.py \
    && pip install . && pip uninstall -y squeezer
COPY . .
# Editable: store.migrate finds alembic.ini and migrations/ beside the packages. squeezer-job: the uid jailed engines
# run as when the image runs as root (run as squeezer, the jail keeps squeezer's uid inside its own namespaces).
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 squeezer \
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin squeezer-job \
    && mkdir -p /data && chown squeezer /data
USER squeezer

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["squeezer"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

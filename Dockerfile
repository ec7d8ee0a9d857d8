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

WORKDIR /src
# Dependencies first, from the lock file, so code changes do not reinstall torch.
COPY requirements/service.lock ./requirements/
RUN pip install -r requirements/service.lock
COPY . .
# The wheel, not the tree: the image holds the package as users install it (migrations and their alembic.ini inside).
# squeezer-job: the uid jailed engines run as when the image runs as root (run as squeezer, the jail keeps squeezer's
# uid inside its own namespaces).
RUN pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && pip install --no-deps /tmp/wheels/squeezer-*.whl \
    && rm -rf /tmp/wheels /src \
    && useradd --create-home --uid 10001 squeezer \
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin squeezer-job \
    && mkdir -p /data && chown squeezer /data
WORKDIR /data
USER squeezer

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["squeezer"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

# One image for the three services and the migrations; docker-compose.yml picks one by command:
#   python -m services.api          (the default below)
#   python -m services.ingest
#   python -m services.segmenter
#   python -m shared.db upgrade     (one-shot: apply migrations, then exit)
# Every setting comes from STREAMSEG_* environment variables; see docs/configuration.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 streamseg \
    && useradd --system --uid 10001 --gid streamseg --no-create-home --home-dir /app streamseg

WORKDIR /build
# The pinned dependencies get a layer of their own, so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt
COPY shared/ shared/
COPY services/ services/
# Installed into site-packages (migrations included) and run from there, not from a source tree.
RUN pip install . && pip check && rm -rf /build

WORKDIR /app
USER 10001:10001
EXPOSE 8100 8101 8102
CMD ["python", "-m", "services.api"]

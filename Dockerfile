# The worker and producer image: `celery -A workers.app worker` by default; `fanout ...`
# (`fanout serve` too) and `celery -A workers.app flower` from the same image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry ./registry
COPY workers ./workers
COPY producer ./producer
COPY service ./service
RUN pip install . && rm -rf /src

# Celery refuses to be comfortable as root, and a worker has no need to be.
RUN useradd --create-home --uid 10001 fanout
USER fanout
WORKDIR /home/fanout
ENV FANOUT_BROKER_URL=redis://redis:6379/0
CMD ["celery", "-A", "workers.app", "worker", "--loglevel=INFO"]

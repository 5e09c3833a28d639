# Image for the docker-compose worker (and any deployment running `celery -A earnevents worker`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY earnevents ./earnevents
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --create-home worker
USER worker
ENV PYTHONPATH=/app
CMD ["celery", "-A", "earnevents", "worker", "-l", "info"]

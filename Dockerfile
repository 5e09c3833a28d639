# Image for the docker-compose worker (and any deployment running `celery -A earnevents worker`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY earnevents ./earnevents
COPY workers ./workers
# Workers import earnevents and the handler modules from /app (PYTHONPATH), which the worker
# user cannot write: compile them here, or every worker start compiles ~100 modules again.
RUN pip install --no-cache-dir . && python -m compileall -q /app/earnevents /app/workers && useradd --create-home worker
USER worker
ENV PYTHONPATH=/app
CMD ["celery", "-A", "earnevents", "worker", "-l", "info"]

# One image for every service of docker-compose.yml: Redis, the simulated AWS
# (moto), the pool worker, the aws workers, beat, Flower and the HTTP gateway.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# redis-server (and redis-cli for its healthcheck): the compose file's Redis
# service runs from this image too.
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*

# Only what .dockerignore lets through: pyproject.toml, README.md,
# celeryconfig.py, tasks/, producer/ and sandbox/ (the compose moto service runs sandbox.mockaws).
COPY . /src
RUN pip install '/src[gateway,demo]' && rm -rf /src

RUN useradd --system --create-home --home-dir /home/warmpool --uid 10001 --user-group warmpool \
    && install -d -o warmpool -g warmpool /data
USER warmpool
WORKDIR /home/warmpool

EXPOSE 8080
CMD ["python", "-m", "producer.gateway", "--help"]

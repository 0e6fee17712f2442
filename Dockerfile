# The dispatcher image: one image for the migrate job, workers, sweeper and simulator.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY dispatcher ./dispatcher
RUN pip install --no-cache-dir . && useradd --system --uid 10001 dispatcher
USER dispatcher
ENTRYPOINT ["dispatcher"]
CMD ["--help"]

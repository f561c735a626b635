# genq image: API, workers, Flower and migrations all run from it (`genq <command>`).
# Stage 1 resolves dependencies with uv from uv.lock; stage 2 is the slim runtime, non-root.
FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/genq
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY models ./models
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY bench ./bench
RUN uv sync --frozen --no-dev

FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 genq
COPY --from=build /opt/genq /opt/genq
COPY --from=build /src /app
ENV PATH=/opt/genq/bin:$PATH PYTHONUNBUFFERED=1 GENQ_TIKTOKEN_CACHE_DIR=/home/genq/.cache/tiktoken
WORKDIR /app
USER genq
EXPOSE 8000 5555 9101
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
ENTRYPOINT ["genq"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

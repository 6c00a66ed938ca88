# Build a wheel with the full toolchain, then install it into a clean slim image.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY backends ./backends
COPY config ./config
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER gateway
EXPOSE 8080
# Exec form: the server is PID 1 and receives SIGTERM from Cloud Run / Kubernetes.
# Serves the embedded default unless QA_CONFIG names another file (mount it, or bake it in).
ENTRYPOINT ["qa-gateway", "serve"]

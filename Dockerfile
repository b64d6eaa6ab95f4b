# The dyno-stream worker (and every other dyno-stream command) as an image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dyno_stream ./dyno_stream
COPY config ./config
RUN pip install . && useradd --create-home --uid 10001 dyno && mkdir /data && chown dyno /data
USER dyno

# Settings: config/dyno-stream.toml, overridden by DYNO_* variables (see README).
ENV DYNO_WORKER__DATA_DIR=/data DYNO_WORKER__HTTP_HOST=0.0.0.0 DYNO_WORKER__LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)" || exit 1
ENTRYPOINT ["dyno-stream"]
CMD ["worker"]

# The hfscan bot as a Docker Space (or any container host): `hfscan serve` on port 7860.
# Secrets (set them as Space secrets, never in this file): HFSCAN_WEBHOOK_SECRET, HF_TOKEN (write access to the
# repos it opens PRs on). Settings: HFSCAN_BOT_MODE (dry-run, report-only, open-pr, push-variant), HFSCAN_BOT_WORKERS,
# HFSCAN_BOT_OPT_OUT, HFSCAN_BOT_ORG_BUDGET. docs/bot.md has the steps.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HOME=/home/hfscan HF_HOME=/data/hf HFSCAN_BOT_DIR=/data/bot HF_HUB_DISABLE_TELEMETRY=1
RUN useradd --create-home --uid 1000 hfscan && mkdir -p /data && chown hfscan /data

WORKDIR /app
COPY --chown=hfscan pyproject.toml README.md LICENSE ./
COPY --chown=hfscan scanner ./scanner
COPY --chown=hfscan templates ./templates
# CPU torch first: without it pip resolves the multi-GB CUDA build
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install '.[serve]'

USER hfscan
EXPOSE 7860
HEALTHCHECK --interval=60s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz')"
CMD ["hfscan", "serve", "--host", "0.0.0.0", "--port", "7860"]

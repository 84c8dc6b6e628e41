"""The bot's HTTP face, on Starlette (served by uvicorn): ``POST /webhook``, ``GET /healthz``, ``GET /metrics``,
``GET /`` (a dashboard without JavaScript) and ``GET /jobs/{id}/report.html``.

Starlette rather than FastAPI: five routes need no request models or OpenAPI; rather than huggingface_hub's
``WebhooksServer``: that one is built on gradio, a UI stack a webhook service does not need.

Example:
    >>> import uvicorn
    >>> uvicorn.run(create_app(bot), host="0.0.0.0", port=7860)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from .events import MAX_PAYLOAD
from .service import Bot


def create_app(bot: Bot):
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def webhook(request):
        if int(request.headers.get("content-length") or 0) > MAX_PAYLOAD:
            return JSONResponse({"error": f"payload over {MAX_PAYLOAD} bytes"}, status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PAYLOAD:
                return JSONResponse({"error": f"payload over {MAX_PAYLOAD} bytes"}, status_code=413)
        status, answer = bot.accept({k.lower(): v for k, v in request.headers.items()}, body)
        return JSONResponse(answer, status_code=status)

    async def healthz(request):
        return JSONResponse({"status": "ok", **bot.queue.counts()})

    async def metrics(request):
        return PlainTextResponse(bot.metrics(), media_type="text/plain; version=0.0.4")

    async def dashboard(request):
        from ..report.render import template

        return HTMLResponse(template("dashboard.html.j2").render(jobs=bot.queue.recent(50),
                                                                  counts=bot.queue.counts(), mode=bot.settings.mode))

    async def report(request):
        try:
            job = bot.queue.get(int(request.path_params["job"]))
        except (TypeError, ValueError):
            job = None
        path = Path(job.report) if job is not None and job.report else None
        root = bot.reports.resolve()
        if path is None or not path.is_file() or not path.resolve().is_relative_to(root):
            return PlainTextResponse("no report for this job", status_code=404)
        return FileResponse(path, media_type="text/html")

    routes = [Route("/webhook", webhook, methods=["POST"]), Route("/healthz", healthz), Route("/metrics", metrics),
              Route("/", dashboard), Route("/jobs/{job:int}/report.html", report)]
    return Starlette(routes=routes)

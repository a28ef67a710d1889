"""The Procfile's `api`: the REST API on uvicorn.

It listens on STEPWISE_API_ADDRESS (default 127.0.0.1) and STEPWISE_API_PORT, else
PORT, else 8000. Every endpoint but health and the docs needs an API token, so it
may listen beyond this machine; a bad configuration stops it at start, naming the
variable. Its metrics have their own listener (`api/metrics.py`), on this machine only
unless STEPWISE_METRICS_ADDRESS says otherwise.
"""

from __future__ import annotations

import sys

import uvicorn

from core.errors import ConfigError
from core.logs import configure_logging
from core.settings import get_settings


def main() -> int:
    configure_logging()
    try:
        settings = get_settings()
        settings.require_servers()
        from api.app import create_app  # declares the broker's actors: needs REDIS_URL

        app = create_app()
    except ConfigError as exc:
        print(f"stepwise api: {exc}", file=sys.stderr)
        return 1
    from api.metrics import serve

    serve(settings)
    uvicorn.run(
        app,
        host=settings.api_address,
        port=settings.api_listen_port(),
        server_header=False,
        proxy_headers=False,
        log_level="info",
        log_config=None,  # uvicorn's loggers go through the process's one handler
    )
    return 0

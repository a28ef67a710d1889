"""The Procfile's `web` server: Streamlit's own command, its log lines through Stepwise's logging.

`stepwise web` runs `python -m dashboard.server run dashboard/app.py ...`. Streamlit gives
each of its loggers a console handler of its own, and prints its welcome and warnings
straight to the terminal; here every one of them, loggers made later included, goes
through the process's one handler instead (`core.logs`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from core.logs import configure_logging

# What Streamlit prints is Streamlit's: logged under its name.
streamlit_log = logging.getLogger("streamlit.cli")
_pending: list[str] = []


def _through_root(logger: logging.Logger) -> None:
    handler = getattr(logger, "streamlit_console_handler", None)
    if handler is not None:
        logger.removeHandler(handler)
    logger.propagate = True


def _print_as_log(message: str, **options: Any) -> None:
    """Streamlit's `print_to_cli`, as log lines (a line printed in parts is one line)."""
    _pending.append(message)
    if options.get("nl", True):
        line = "".join(_pending).strip()
        _pending.clear()
        if line:
            streamlit_log.info("%s", line)


def main() -> None:
    configure_logging()
    import streamlit.cli_util
    import streamlit.logger
    import uvicorn.config
    from streamlit.web.cli import main as streamlit_main

    streamlit.cli_util.print_to_cli = _print_as_log
    # Streamlit's uvicorn applies uvicorn's default logging (handlers of its own): make
    # that default configure nothing, so uvicorn's loggers reach the root's handler.
    uvicorn.config.LOGGING_CONFIG.clear()
    uvicorn.config.LOGGING_CONFIG.update(
        version=1,
        disable_existing_loggers=False,
        formatters={  # made (uvicorn sets their colours), given to no handler
            "default": {"()": "uvicorn.logging.DefaultFormatter"},
            "access": {"()": "uvicorn.logging.AccessFormatter"},
        },
    )
    streamlit.logger.setup_formatter = _through_root
    for logger in list(streamlit.logger._loggers.values()):
        _through_root(logger)
    sys.argv = ["streamlit", *sys.argv[1:]]
    streamlit_main()


if __name__ == "__main__":
    main()

"""Log lines shaped like the real server's, on stderr:
    (APIServer pid=556855) INFO 05-19 12:24:51 [orchestrator.py] [Orchestrator] Received shutdown signal
    (StageEngineCoreProc pid=557119) INFO 05-19 12:24:51 [core.py] Shutdown initiated (timeout=0)
uvicorn's own lines keep their text ("INFO:     Shutting down") behind the same prefix, so tools
that grep the real server's logs work on the testbed's.
"""
from __future__ import annotations

import logging
import os
import sys


def setup(role: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"({role} pid={os.getpid()}) %(levelname)s %(asctime)s [%(name)s] %(message)s",
        datefmt="%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def uvicorn_log_config(role: str = "APIServer") -> dict:
    prefix = f"({role} pid={os.getpid()}) "
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": "uvicorn.logging.DefaultFormatter",
                                   "fmt": prefix + "%(levelprefix)s %(message)s",
                                   "use_colors": False}},
        "handlers": {"default": {"formatter": "default", "class": "logging.StreamHandler",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
                    "uvicorn.error": {"level": "INFO"}},
    }

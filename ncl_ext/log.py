"""ncl_ext's logger and progress bars, quieted and redirected the way transformers' are.

Everything ncl_ext prints goes through the standard :mod:`logging` logger ``"ncl_ext"``,
and every progress bar is a tqdm bar labelled with what it does. Progress bars show unless
that logger is set to WARNING or above (``logging.getLogger("ncl_ext").setLevel(logging.WARNING)``
silences both); the command line sets the level with ``-q`` / ``-v``.

Examples:
    >>> import logging
    >>> logging.getLogger("ncl_ext").setLevel(logging.WARNING)
    >>> bar = progress(range(3), "probe")
    >>> bar.disable
    True
    >>> logging.getLogger("ncl_ext").setLevel(logging.NOTSET)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["configure_cli_logging", "logger", "progress"]

logger = logging.getLogger("ncl_ext")


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, **kwargs: Any) -> Any:
    """A tqdm bar (``tqdm.auto``) labelled ``desc``.

    Hidden when the ``ncl_ext`` logger is set to WARNING or above, or when tqdm's own
    ``TQDM_DISABLE`` environment variable is set (as every tqdm bar is).
    """
    from tqdm.auto import tqdm

    hidden = logger.level >= logging.WARNING or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    enabled = kwargs.pop("enabled", True) and not hidden
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True, leave=False, **kwargs)


def configure_cli_logging(verbosity: int) -> None:
    """The command line's handler: ``-1`` (``-q``) warnings only, ``0`` progress and results, ``1`` (``-v``) debug.

    Messages go to the current ``sys.stderr``; calling it again replaces the handler it added before.
    """
    global _cli_handler
    if _cli_handler is not None:
        logger.removeHandler(_cli_handler)
    _cli_handler = logging.StreamHandler(sys.stderr)
    _cli_handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_cli_handler)
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logger.propagate = False


_cli_handler: logging.Handler | None = None

"""Build the operations on stored results from what the user named: a backend URL, connection
overrides, and (only with ``-A``) a Celery app.

This lives apart from :mod:`consulresults.backend` on purpose: without an app, nothing here
imports Celery, which would cost most of a CLI command's start-up. With an app, the operations
decode results as that app's backend does (its serializer, its ``accept_content``, pickle only
if it accepts it) and use its ``consulresults_*`` settings and ``result_expires``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .connection import connect
from .expiry import CleanupNeeded, ExpiryPlan
from .kv import KVStore
from .operations import ResultOperations
from .settings import SettingsError, resolve

DEFAULT_URL = "consulresults://"
CELERY_DEFAULT_EXPIRES = 86_400.0


def open_operations(
    url: str | None = None,
    overrides: Mapping[str, object] | None = None,
    app: Any = None,
) -> ResultOperations:
    """Operations on the results at ``url`` (default: the app's ``result_backend``, else the
    local agent at the root prefix), with ``overrides`` (setting name → value) on top."""
    if app is not None:
        from .backend import ConsulBackend

        url = strip_class_path(url or app.conf.result_backend or DEFAULT_URL)
        with warnings.catch_warnings():  # meant for workers; `doctor` tells an operator
            warnings.simplefilter("ignore", CleanupNeeded)
            return ConsulBackend(app=app, url=url, overrides=overrides).operations()
    try:
        settings = resolve(strip_class_path(url or DEFAULT_URL), overrides=overrides)
        transport = connect(settings)
    except SettingsError as exc:  # worded as the backend words it, with or without an app
        raise SettingsError(f"consulresults backend: {exc}") from None
    store = KVStore(transport, settings.prefix)
    expiry = ExpiryPlan.for_expires(CELERY_DEFAULT_EXPIRES, settings.session_window)
    return ResultOperations(store, expiry)


def strip_class_path(url: str) -> str:
    """``consulresults.backend:ConsulBackend+consul://h/p`` → ``consul://h/p``."""
    scheme, sep, rest = url.partition("://")
    return url if "+" not in scheme else scheme.split("+", 1)[1] + sep + rest

"""The Celery app's side of ``consul-results retry`` (:class:`consulresults.requeue.App`): the
tasks it registers and their ``acks_late``, its broker, and its result serializer for the mark.

Tasks are sent with ``app.send_task``, never ``apply_async``: with ``task_always_eager`` the
latter would run the task inside the CLI.
"""

from __future__ import annotations

from typing import Any, cast

from celery import Celery
from kombu.exceptions import EncodeError, OperationalError
from kombu.serialization import dumps, loads
from kombu.utils.encoding import str_to_bytes

from .exceptions import BrokerUnavailable
from .requeue import Call, CannotSend


class AppRequeue:
    """:class:`~consulresults.requeue.App` on a Celery app given with ``-A``."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        # the modules a worker imports (imports, include, autodiscovered tasks): the names it
        # knows are the names a retry may send
        app.loader.import_default_modules()

    def registered(self, name: str) -> bool:
        return name in self.app.tasks

    def acks_late(self, name: str) -> bool:
        return bool(self.app.tasks[name].acks_late)

    def send(self, call: Call, task_id: str) -> None:
        try:
            self.app.send_task(
                call.name, call.args, call.kwargs, task_id=task_id, **self._route(call.queue)
            )
        except EncodeError as exc:
            raise CannotSend(f"its arguments cannot be sent: {exc}") from None
        except (OperationalError, OSError) as exc:
            url = self.app.connection_for_write().as_uri()  # without its password
            raise BrokerUnavailable(f"the broker at {url} failed: {exc}") from None

    def _route(self, routing_key: str | None) -> dict[str, Any]:
        """Where the task was delivered: the queue of that name, else the app's queue bound
        with that routing key, else a queue of that name as ``apply_async(queue=...)`` would
        make one; with no stored routing key, the app's routes decide."""
        if not routing_key:
            return {}
        queues = self.app.amqp.queues
        if routing_key not in queues:
            bound = (q.name for q in queues.values() if q.routing_key == routing_key)
            return {"queue": next(bound, routing_key)}
        return {"queue": routing_key}

    def remark(self, payload: bytes, fields: dict[str, str]) -> bytes:
        """The meta read and written with kombu and the app's result serializer (its own types,
        dates or UUIDs in args, survive), so the value keeps its format."""
        backend = self.app.backend
        meta = loads(payload, backend.content_type, backend.content_encoding, accept=backend.accept)
        _, _, data = dumps({**meta, **fields}, serializer=backend.serializer)
        return cast(bytes, str_to_bytes(data))

"""Transitional: a webhook call's run (`api/hooks.py`), until it moves to `service` with
the other webhook writes. Every other action that lived here is in `service/`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from core.errors import NotAuthenticated, ValidationFailed
from core.run_input import parse_run_input
from core.secrets import SIGNATURE_HEADER
from db import hooks
from db.runs import RunMessage
from db.session import session_scope
from tasks.send import send_run


def run_by_hook(
    hook_id: uuid.UUID,
    body: bytes,
    *,
    secret: str | None,
    signature: str | None,
    delivery_id: str | None,
    admit: Callable[[uuid.UUID], None] | None = None,
) -> uuid.UUID:
    """Start a run for a call to an automation's webhook, its JSON body as the run's input;
    returns the execution id (a repeated delivery id: the first call's, nothing new).

    NotFound for a trigger that does not exist (or was disabled), NotAuthenticated without
    its secret or a valid signature, ValidationFailed for a body that is not a JSON object:
    nothing is written in any of these cases. `admit(hook_id)` is called once the call is
    proven, before anything is written, and may raise to refuse it (the API's rate limit).
    """
    with session_scope() as session:
        actor = hooks.authenticate(session, hook_id, body, secret=secret, signature=signature)
        if actor is None:
            raise NotAuthenticated(
                f"send the webhook's secret as {hooks.SECRET_HEADER}, or sign the body "
                f"({SIGNATURE_HEADER}: t=<unix seconds>,v1=<HMAC-SHA256 of t.body>)"
            )
        if admit is not None:
            admit(hook_id)
        delivery = hooks.check_delivery_id(delivery_id)
        run_input = parse_run_input(body, field="body")
        if run_input is None:
            raise ValidationFailed.single("body", 'send a JSON object, like {"key": "value"}')
        started = hooks.start_hook_run(session, delivery, run_input, actor=actor)
    if not started.repeated:
        send_run(RunMessage(started.execution_id, started.max_retries, urgent=started.urgent))
    return started.execution_id

"""Sending is the engine's thin edge: it declares no actor, builds no runner, and names
each actor on the queue the actors are declared on."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_sending_modules_loads_none_of_the_engine() -> None:
    # given a fresh interpreter, as the API or the dashboard starts
    code = (
        "import sys, tasks.send, tasks.queues; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('tasks.'))))"
    )
    # when it imports the sending module and the queue reader
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=os.environ
    ).stdout.split()
    # then neither the actors, the runner nor the agent client came with them
    assert set(loaded) == {
        "tasks.broker",
        "tasks.queues",
        "tasks.send",
        "tasks.signals",
        "tasks.workers",
    }


def test_every_actor_listens_on_the_queue_its_messages_are_sent_to() -> None:
    from tasks.actors import broker
    from tasks.send import ACTOR_QUEUES

    declared = {name: broker.get_actor(name).queue_name for name in broker.get_declared_actors()}
    assert declared == ACTOR_QUEUES

"""Traces: one per run, a span per step attempt, exported by OTLP/HTTP when configured.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variable; the exporter reads
the other `OTEL_*` ones itself): then `Tracing.start()` answers None, the runner sends
no `traceparent` and stores no trace id, and no OpenTelemetry SDK code runs on its
path.

On, a run's trace id is its execution id (the same 128 bits, as 32 hex digits), so every
attempt of a run, in whichever worker process and message it happens, joins the one
trace without asking anyone; the execution stores it (`executions.trace_id`) and its
page shows it. Each step attempt is a CLIENT span ("step N") under the run's root
span, with its outcome, HTTP status and whether it is retried; the agent receives the
span's W3C `traceparent`, so its own spans join the run's trace. The root span
("execution") is written when the run ends, from its slot to its end, with the span id
its attempts named as their parent.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.outcome import StepOutcome

ROOT_SPAN_MASK = (1 << 64) - 1
SERVICE_NAME = "stepwise"
# The ids the next span takes (the root span's, chosen from the execution), if any.
_fixed_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "stepwise_fixed_span_ids", default=None
)


def trace_id_of(execution_id: uuid.UUID) -> str:
    """A run's trace id as written in W3C `traceparent` and shown on its page."""
    return execution_id.hex


def _root_span_id(execution_id: uuid.UUID) -> int:
    return (execution_id.int & ROOT_SPAN_MASK) or 1


@dataclass
class StepSpan:
    """A step attempt's span and the `traceparent` that names it to the agent."""

    span: Any
    traceparent: str


class Tracing:
    """This process's tracer provider, exporting by OTLP/HTTP in batches."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        class ChosenIds(RandomIdGenerator):
            """Random ids, but for the root span of a run: the ids its run chose."""

            def generate_span_id(self) -> int:
                fixed = _fixed_ids.get()
                return fixed[1] if fixed is not None else super().generate_span_id()

            def generate_trace_id(self) -> int:
                fixed = _fixed_ids.get()
                return fixed[0] if fixed is not None else super().generate_trace_id()

        self.provider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE_NAME}), id_generator=ChosenIds()
        )
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("stepwise.runner")

    def step(self, execution_id: uuid.UUID, step_number: int, attempt: int) -> StepSpan:
        """Start the span of one call of a step, under its run's root span."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        root = SpanContext(
            trace_id=execution_id.int,
            span_id=_root_span_id(execution_id),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        parent = trace.set_span_in_context(NonRecordingSpan(root))
        span = self.tracer.start_span(
            f"step {step_number}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "stepwise.execution_id": str(execution_id),
                "stepwise.step": step_number,
                "stepwise.attempt": attempt,
            },
        )
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
        return StepSpan(span, carrier["traceparent"])

    @staticmethod
    def end_step(step: StepSpan, outcome: StepOutcome, *, retried: bool) -> None:
        """End a step's span with what the call came to."""
        from opentelemetry.trace import Status, StatusCode

        span = step.span
        span.set_attribute("stepwise.outcome", "succeeded" if outcome.ok else "failed")
        span.set_attribute("stepwise.retried", retried)
        if outcome.status is not None:
            span.set_attribute("http.response.status_code", outcome.status)
        if not outcome.ok:
            span.set_status(Status(StatusCode.ERROR, outcome.error or "failed"))
        span.end()

    def end_run(
        self, execution_id: uuid.UUID, status: str, *, started: datetime, error: str | None
    ) -> None:
        """Write the run's root span, from `started` to now, with the run's end."""
        from opentelemetry.context import Context
        from opentelemetry.trace import Status, StatusCode

        token = _fixed_ids.set((execution_id.int, _root_span_id(execution_id)))
        try:
            span = self.tracer.start_span(
                "execution",
                context=Context(),  # a root: no parent, the chosen ids
                start_time=int(started.timestamp() * 1e9),
                attributes={"stepwise.execution_id": str(execution_id), "stepwise.status": status},
            )
        finally:
            _fixed_ids.reset(token)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def shutdown(self) -> None:
        """Send what is batched and stop (a worker's stop)."""
        self.provider.shutdown()


def start(endpoint: str) -> Tracing | None:
    """This process's tracing, or None when no OTLP endpoint is configured (off)."""
    return Tracing() if endpoint else None

"""The application layer: every write of Stepwise, whoever asks for it.

The REST API, the dashboard and the `stepwise` command translate input and output and
call a function here; nothing above this package opens a transaction for a write. A
function here owns one unit of work (`service.unit`): the transaction, the actor's role
check, the audit row, an `Idempotency-Key`, and what must happen only after the commit
(a run's message, an early dispatch).
"""

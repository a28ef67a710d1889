"""The pure domain: statuses, limits, errors, timing and every rule, with no database, queue,
HTTP or UI library (import-linter checks it)."""

"""`stepwise api ...`: the REST API for scripts (STEPWISE_API_URL, STEPWISE_API_TOKEN).

Exit codes: 0 ok; 1 the API refused (its problem+json `detail` is printed); 2 the API
could not be reached or the settings are missing; 3 `tail`: the run ended without
succeeding (failed, cancelled or skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from core.vocabulary import FINAL_STATUSES, ExecutionStatus

RUN_NOT_SUCCEEDED = 3


class ApiFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _client() -> httpx.Client:
    from core.settings import get_settings

    settings = get_settings()
    if not settings.api_url or not settings.api_token:
        raise ApiFailed("set STEPWISE_API_URL and STEPWISE_API_TOKEN", 2)
    headers = {"Authorization": f"Bearer {settings.api_token}"}
    return httpx.Client(base_url=settings.api_url.rstrip("/"), headers=headers, timeout=30)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    return answer(client, method, path, **kwargs).json()


def answer(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The API's answer to one call; ApiFailed (with the problem's detail) for an error."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        raise ApiFailed(f"cannot reach the API: {e}", 2) from e
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text
        raise ApiFailed(f"{response.status_code}: {detail}", 1)
    return response


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _list(client: httpx.Client, args: argparse.Namespace) -> None:
    """Print the list as the API answers it; executions a page at a time (`--all`: every
    page, followed by its cursor, as one list)."""
    given = {"automation_id": args.automation}
    if args.what == "executions":
        given |= {"schedule_id": args.schedule, "status": args.status, "limit": args.limit}
        given |= {"cursor": args.cursor}
    params = {k: v for k, v in given.items() if v}
    if args.what == "automations":  # every page, followed by the cursor header, as one list
        _print(_every_automation(client, params))
        return
    page = call(client, "GET", f"/v1/{args.what}", params=params)
    if args.what == "executions" and args.all:
        items = page["items"]
        while page["next_cursor"]:
            page = call(
                client, "GET", "/v1/executions", params=params | {"cursor": page["next_cursor"]}
            )
            items += page["items"]
        page = {"items": items, "next_cursor": None}
    _print(page)


def _every_automation(client: httpx.Client, params: dict[str, Any]) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        following = params if cursor is None else params | {"cursor": cursor}
        response = answer(client, "GET", "/v1/automations", params=following)
        items += response.json()
        cursor = response.headers.get("Stepwise-Next-Cursor")
        if not cursor:
            return items


def _pause(client: httpx.Client, args: argparse.Namespace) -> None:
    body = {"note": args.note} if args.note else None
    _print(call(client, "POST", f"/v1/schedules/{args.schedule}/pause", json=body))


def _resume(client: httpx.Client, args: argparse.Namespace) -> None:
    _print(call(client, "POST", f"/v1/schedules/{args.schedule}/resume"))


def _run_now(client: httpx.Client, args: argparse.Namespace) -> None:
    path = f"/v1/automations/{args.id}/run"
    if args.schedule:
        path = f"/v1/schedules/{args.id}/run"
    body = None
    if args.input is not None:
        try:
            body = {"input": json.loads(args.input)}
        except ValueError as e:
            raise ApiFailed(f"--input is not JSON: {e}", 2) from e
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    _print(call(client, "POST", path, json=body, headers=headers))


def _tail(client: httpx.Client, args: argparse.Namespace) -> int:
    """Print each step as it finishes until the execution ends; 0 only if it succeeded."""
    seen: set[tuple[int, int]] = set()
    while True:
        execution = call(client, "GET", f"/v1/executions/{args.execution}")
        for step in execution.get("steps", []):
            key = (step["step_number"], step["attempt"])
            if step.get("finished_at") and key not in seen:
                seen.add(key)
                print(json.dumps(step, default=str) if args.json else _step_line(step), flush=True)
        if execution["status"] in FINAL_STATUSES:
            summary = {k: v for k, v in execution.items() if k != "steps"}
            print(json.dumps(summary, default=str) if args.json else f"run {execution['status']}")
            return 0 if execution["status"] == ExecutionStatus.SUCCEEDED else RUN_NOT_SUCCEEDED
        time.sleep(args.interval)


def _step_line(step: dict[str, Any]) -> str:
    took = step.get("duration_ms")
    return (
        f"step {step['step_number']} {step['step_name']} (attempt {step['attempt']}): "
        f"{step['status']}" + (f" in {took} ms" if took is not None else "")
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = sub.add_parser("api", help="the REST API for scripts (STEPWISE_API_URL/TOKEN)")
    cmds = api.add_subparsers(dest="api_command", required=True)
    p = cmds.add_parser("list", help="list automations, schedules or executions")
    p.add_argument("what", choices=["automations", "schedules", "executions"])
    p.add_argument("--automation", help="only this automation's (id)")
    p.add_argument("--schedule", help="executions: only this schedule's (id)")
    p.add_argument("--status", action="append", help="executions: only those in this status")
    p.add_argument("--limit", type=int, help="executions: how many a page (API default 50)")
    p.add_argument("--cursor", help="executions: the page after this `next_cursor`")
    p.add_argument("--all", action="store_true", help="executions: every page, as one list")
    p.set_defaults(api_func=_list)
    p = cmds.add_parser("pause", help="pause a schedule")
    p.add_argument("schedule")
    p.add_argument("--note", help="shown with the schedule until it is resumed")
    p.set_defaults(api_func=_pause)
    p = cmds.add_parser("resume", help="resume a schedule")
    p.add_argument("schedule")
    p.set_defaults(api_func=_resume)
    # `trigger` is its first name, kept for the scripts that call it.
    p = cmds.add_parser(
        "run", aliases=["trigger"], help="run an automation now (or a schedule: --schedule)"
    )
    p.add_argument("id")
    p.add_argument("--schedule", action="store_true", help="the id is a schedule's")
    p.add_argument("--input", help="the run's input, a JSON object: '{\"order\": 42}'")
    p.add_argument("--idempotency-key", help="the same key again starts no second run")
    p.set_defaults(api_func=_run_now)
    p = cmds.add_parser("tail", help="print an execution's steps as they finish, until it ends")
    p.add_argument("execution")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument(
        "--json", action="store_true", help="one JSON object a line: steps, then the execution"
    )
    p.set_defaults(api_func=_tail)
    api.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with _client() as client:
            code: int | None = args.api_func(client, args)
    except ApiFailed as e:
        print(f"stepwise api: {e}", file=sys.stderr)
        return e.code
    return code or 0

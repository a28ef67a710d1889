"""What `stepwise run` started, recorded in the data directory for the other commands to find.

`stepwise run` writes `<data dir>/run.json` (owner-only) once its servers are up: the
embedded servers' addresses, the agent allowlist it made (the demo agent), the REST API's
address and where the local key is; it removes the file when it stops. Any other
`stepwise` command started with neither DATABASE_URL nor REDIS_URL set, beside a running
`stepwise run` (same data directory), reads it and acts on the same system with no setup.
A variable set in the environment always wins over the record.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

RUN_FILE = "run.json"
# What the record may set: the servers, the allowlist, the API's address for `stepwise api`.
RECORDED = ("DATABASE_URL", "REDIS_URL", "STEPWISE_AGENT_ALLOW", "STEPWISE_API_URL")


def record(data_dir: Path, env: dict[str, str], *, key_file: Path | None) -> Path:
    """Write what this `stepwise run` started (`env`'s recorded variables, the local key's
    file when it made one) for the other commands; returns the file."""
    path = data_dir / RUN_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    values = {name: env[name] for name in RECORDED if env.get(name)}
    content = {
        "pid": os.getpid(),
        "env": values,
        "secret_key_file": None if key_file is None else str(key_file.resolve()),
    }
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(content, file)
    return path


def forget(data_dir: Path) -> None:
    """Remove this process's record (a record another `stepwise run` wrote stays)."""
    found = _read(data_dir / RUN_FILE)
    if found is not None and found.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            (data_dir / RUN_FILE).unlink()


def adopt(data_dir: Path) -> list[str]:
    """With DATABASE_URL and REDIS_URL both unset, take the addresses and key of the
    `stepwise run` running on `data_dir` into this process's environment (what is set
    stays); the names taken. Nothing when no `stepwise run` is running there."""
    if os.environ.get("DATABASE_URL") or os.environ.get("REDIS_URL"):
        return []
    found = _read(data_dir / RUN_FILE)
    if found is None or not _alive(found.get("pid")):
        return []
    taken = []
    recorded = found.get("env")
    for name, value in (recorded if isinstance(recorded, dict) else {}).items():
        if name in RECORDED and not os.environ.get(name):
            os.environ[name] = str(value)
            taken.append(name)
    key_file = found.get("secret_key_file")
    if isinstance(key_file, str) and key_file and not os.environ.get("STEPWISE_SECRET_KEYS"):
        with contextlib.suppress(OSError):
            os.environ["STEPWISE_SECRET_KEYS"] = Path(key_file).read_text().strip()
            taken.append("STEPWISE_SECRET_KEYS")
    return taken


def _read(path: Path) -> dict[str, object] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it is there
        return True
    return True

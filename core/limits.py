"""Every bound Stepwise puts on its input, in one place.

Validation (`core.automation`, `core.schedule`), the database's CHECK constraints and
column sizes (`db/models.py`), the dashboard's inputs and the tests all read these
names; none of them types a number of its own.
"""

from __future__ import annotations

# Automations.
MAX_STEPS = 50
MAX_NAME = 200  # automation and step names
MAX_MESSAGE = 20_000  # one step's message
MAX_TEXT = 100_000  # description, project context
MAX_URL = 2000
MIN_STEP_TIMEOUT_S = 1
MAX_STEP_TIMEOUT_S = 3600
DEFAULT_STEP_TIMEOUT_S = 30
MAX_RETRIES = 20
DEFAULT_MAX_RETRIES = 3
MAX_CONCURRENCY = 1000  # an automation's agent calls in flight at once, all workers together
MIN_RATE_PER_S = 0.01  # an automation's agent calls per second: one every 100 s at least
MAX_RATE_PER_S = 1000
MAX_OWNER = 200
MAX_HEADERS = 20  # request headers an automation sends with every call
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 2000

# Runs and agent answers.
MAX_RECOVERIES = 5  # claims past a run's retries before housekeeping gives up on it
MAX_OUTPUT_DEPTH = 100  # JSON nested deeper is kept as text (parsers and encoders recurse)
MAX_SECRET_ORIGINS = 20  # agent origins one workspace secret may be sent to
MAX_API_PAGE = 200  # rows one API list call answers with at most
DEFAULT_AUTOMATIONS_PAGE = 100  # /v1/automations without `limit` (it had none before pages)
MAX_TOKEN_DAYS = 3650  # an API token's lifetime, when it is given one
TOKEN_LIFETIMES_DAYS = (7, 30, 90, 365)  # what the Workspace page offers (or never)
# Any API request's body: above the biggest automation (50 steps of MAX_MESSAGE, its texts,
# headers), far below what would tie up the API process's memory (413 past it).
MAX_API_BODY_BYTES = 4 * 1024 * 1024
MAX_INPUT_BYTES = 65_536  # a run's input (a schedule's, a caller's, a webhook's body), as JSON

# Workflow graphs (core.graph) and step templates (core.templates). The depth of a graph
# and the dependents of a step have no bound of their own: MAX_STEPS bounds both, and a
# chain of MAX_STEPS is an automation of today.
MAX_STEP_KEY = 64  # a step's key: a slug that templates read as steps.<key>.output
MAX_NEEDS = 20  # the steps one step waits for (its call carries each one's output)
MAX_ITEMS = 1000  # the items of one step's for_each: one call each
MAX_EXPRESSION = 2000  # a `when` condition or a `for_each` expression
MAX_RENDERED = 262_144  # characters of a rendered message or input, and of any value built
MAX_TEMPLATE_OPS = 100_000  # loop turns, calls, filters and operators of one render
MAX_RENDER_S = 1.0  # one render's time, checked at each of those
MAX_RANGE = 10_000  # numbers of one range() in a template

# Durable waits (steps of kind async, approval and sleep).
MAX_WAIT_S = 7 * 86400  # an async or approval step's timeout, a sleep's length, at most
DEFAULT_APPROVAL_TIMEOUT_S = 86_400
WAIT_POLL_S = 1.0  # a coordinator with calls in flight reads its wait rows this often
MAX_WAIT_NOTE = 500  # an async step's progress note, as stored
# A parked run's wake-up goes to Redis only once its instant is this close: a park sends it
# when it is, housekeeping's minute pass when it comes within (`db.recovery.wakes_due`).
# Nothing waits in Redis, or in a worker's memory, for a wait hours or days away. Above
# the minute between passes with room for a few missed ones. A delayed message is held,
# unacknowledged, in a worker's memory until its time (`tasks.broker`): this bounds how
# long, and how many (the runs waking within the next few minutes).
WAKE_HORIZON_S = 300

# Inbound webhooks.
MAX_DELIVERY_ID = 200  # the Stepwise-Delivery header
SIGNATURE_TOLERANCE_S = 300  # a signed webhook call this far from the database's clock is refused

# Schedules.
MIN_INTERVAL_S = 10
MAX_CRON = 200
MAX_TIMEZONE = 64
MAX_REASON = 200  # a schedule's completed_reason column, and its parked_error
MAX_CATCHUP_WINDOW_S = 7 * 86400  # also capped by the retention age (see core.schedule)
DEFAULT_CATCHUP_WINDOW_S = 3600
MAX_JITTER_S = 3600
MAX_RUN_ALL = 100  # missed slots run by the run_all misfire policy
MAX_SKIPPED_RECORDED = 100  # missed slots recorded one row each; older ones only counted
MAX_PAUSE_NOTE = 500  # why a schedule was paused, as the person wrote it
MAX_BACKFILL_SLOTS = 100  # slots one backfill may create runs for
MAX_BULK = 100  # rows one bulk action (retry the failed runs of a filter) acts on

# Words stored in short text columns (statuses, kinds, policies, triggers).
MAX_WORD = 16

# Workspaces.
MAX_SECRET_NAME = 64  # letters, digits and _ (core.access.SECRET_NAME)
MAX_SECRET_VALUE = 10_000
DEFAULT_MAX_AUTOMATIONS = 200  # per workspace, unless its own quota says otherwise
DEFAULT_MAX_SCHEDULES = 1000
DEFAULT_MAX_RUNS_PER_MINUTE = 6000  # 100 a second: above any real load, below a runaway

# Notifications.
MAX_CHANNEL_URL = 2000  # an apprise URL, sealed at rest
MAX_FAILURE_THRESHOLD = 100  # consecutive failed runs before a failure notice
MAX_NOTICE_TEXT = 2000  # a notice's summary and a delivery's error, as stored

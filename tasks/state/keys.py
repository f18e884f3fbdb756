"""Every Redis key warmpool uses, and the schema behind it.

All keys of a pool live under ``warmpool:{<namespace>}:`` in the state database
(``WARMPOOL_REDIS_URL``), where the namespace is the pool's group name unless
its configuration sets another (tasks/pools.py); the braces make every key of one pool hash to the
same Redis Cluster slot, so the Lua scripts stay legal there. None of them has
a TTL unless stated: they are the pool's state, rebuilt from AWS on refresh.

===================  ======  ==============================================================
key                  type    meaning
===================  ======  ==============================================================
``machines``         hash    instance id -> JSON machine record (tasks.pool.model.Machine.to_json)
``idle``             zset    instance ids that may be handed out; score = idle-since (ms).
                             ZPOPMIN hands out the machine idle longest. May hold stale
                             members: the record's ``state`` field is authoritative.
``projects``         hash    project id -> instance id it holds (at most one per pool)
``group``            hash    group bounds and refresh bookkeeping: ``min_size``,
                             ``max_size``, ``desired_capacity`` (optimistically updated by
                             releases and scale-in until the next refresh), ``observed_at``
                             (the aws worker's clock reading of the newest applied snapshot:
                             shown, never used to order), ``applied_seq`` (``refresh_seq`` of
                             the newest applied snapshot; one not above it, or above the last
                             issued, is refused),
                             ``refreshed_at``, ``refresh_error``, ``refresh_error_at``,
                             ``lost_total``, ``wanted``, ``capped``, ``unready_total``
                             (machines terminated for never becoming ready),
                             ``backoff_until`` / ``backoff_reason`` (scale-up paused),
                             ``refresh_duration_s`` (the last refresh's AWS read)
                             ``held_other`` (quarantined + foreign machines at the last full
                             rebalance: the top-up counts them as held), ``epoch`` (this
                             state's identity, mirrored in the group's ``warmpool:epoch``
                             tag), ``epoch_confirmed`` ("1" once AWS shows that tag: an
                             empty state is then known to be a loss), ``lost_at`` (when the
                             state was last found lost; machines launched before it are
                             quarantined rather than made idle)
``lost``             list    JSON records of assigned machines that vanished, newest first,
                             trimmed to LOST_KEEP entries
``top_up``           string  "1" while a top-up job (``warmpool.rebalance``) is queued; TTL
                             TOP_UP_COALESCE_MS. Coalesces the top-ups assign/release ask for.
``leases``           zset    instance id -> lease expiry (epoch s) of assigned machines with
                             a lease; expired members are released like ``release``
``waiters``          zset    request id -> arrival sequence: callers waiting for a machine
                             (assign with ``wait``), served lowest score first (FIFO)
``waiter_data``      hash    request id -> JSON tasks.pool.model.Waiter (project, deadline, lease)
``waiter_seq``       string  counter giving each waiter its arrival sequence
``unready``          zset    instance id -> when it was terminated for never becoming ready;
                             members older than UNREADY_WINDOW_S are trimmed. Drives the
                             launch back-off.
``refresh_lock``     string  redis-py lock held while an aws worker reads the group (TTL
                             REFRESH_LOCK_TTL_S): a refresh that finds it held is skipped, so
                             slow AWS answers never pile refreshes up
``capacity_lock``    string  redis-py lock held while an aws worker reads desired capacity
                             and raises it (TTL 30 s): raises never interleave
``aws_calls``        hash    AWS API action -> attempts made by refresh jobs and side effects
                             (reported by the aws workers with each refresh)
``aws_errors``       hash    AWS API action -> attempts that failed (throttled, 5xx, refused)
``refresh_soon``     string  "1" while an early refresh is queued (someone waits); TTL
                             REFRESH_SOON_MS
``withdrawn``        zset    request id -> until when it is remembered (epoch s): assigns whose
                             caller left (``warmpool.withdraw``). Such a request is never
                             queued or handed a machine again; members are trimmed by the next
                             withdraw once WITHDRAWN_KEEP_S have passed.
``refresh_seq``      string  counter; a refresh takes the next value (INCR) when it starts its
                             AWS read, under ``refresh_lock``; its snapshot carries it (``seq``)
                             and snapshots are ordered by it, never by any machine's clock
``dead_letters``     list    JSON tasks.pool.ports.DeadLetter records of messages a worker set
                             aside instead of running (tasks.worker.screening), newest first,
                             trimmed to DEAD_LETTER_KEEP entries; excerpts only, never whole bodies
``dead_reasons``     hash    refusal reason (tasks.contract REFUSED_*) -> messages set aside
                             for it, ever (status: ``dead_letters_total``, ``dead_letters_by_reason``)
``events``           stream  the pool's event stream (docs/operations.md "Events"): one field
                             ``event`` = JSON ``{at, type, project_id, instance_id, reason,
                             ...}`` (tasks.pool.events); entry id = event id. Written by the
                             pool worker, in the same Lua script as the transition it records
                             where that is one; bounded ``XADD MAXLEN ~ EVENTS_KEEP``. Each
                             webhook reads it with its own consumer group ``webhook:<hash>``;
                             other readers (producer/events.py) add ``id`` and ``pool``
``webhooks``         hash    consumer group name (``webhook:<hash>``) -> JSON delivery health
                             of that webhook (tasks.hooks.deliver): url, delivered, retried,
                             given_up, last_error, last_error_at, last_event_id
===================  ======  ==============================================================

The pool's economics ledger (tasks.state.redis_ledger.RedisLedger, EconomicsKeys; written only
by the pool worker, except ``policy`` which ``warmpool policy set`` writes after validating it):

===================  ======  ==============================================================
``econ:figures``     hash    counters and gauges of tasks.pool.ledger (``assigns_warm``,
                             ``assigns_waited``, ``assigns_failed``, ``wait_bucket:<i>``,
                             ``wait_seconds_sum``, ``launches``, ``terminations:<reason>``,
                             ``launch_ready_seconds_sum``/``_count``, ``idle_machine_seconds``;
                             gauges ``policy_target``, ``policy_reason``, ``policy_spec``,
                             ``idle_at``, ``idle_count``, ``surplus_since``)
``econ:launch``      list    recent launch-to-ready seconds, newest first, LAUNCH_KEEP at most
``econ:claims``      list    recent claim times (epoch s), newest first, CLAIMS_KEEP at most
``econ:demand:<d>``  hash    day ``d`` (epoch s // 86400) -> {minute index: assigns}; TTL
                             HISTORY_KEEP_S (15 days): the demand history is bounded by time
``econ:since``       string  when the demand history began (absent: none, or lost)
``econ:policy``      string  JSON {"policy": SPEC, "schedules": [...] | null, "set_at": s}: the
                             runtime override of the configured policy (absent: configured)
===================  ======  ==============================================================

One more key under the same prefix is written only by the local stack's demo,
never by warmpool itself (so no PoolKeys field: a store reset keeps it):

===================  ======  ==============================================================
``demo``             string  set by ``warmpool demo`` on a Redis it did not start: this
                             group's pool state and the broker's queues are a demo's, and a
                             later demo may clear them (sandbox/demo_redis.py). Absent: the
                             demo refuses to touch them.
===================  ======  ==============================================================

Global keys (not of one pool: outside every ``{...}`` hash tag), in the same
state database:

==============================  ======  ===================================================
key                             type    meaning
==============================  ======  ===================================================
``warmpool:tokens``             hash    gateway API token name -> JSON record ``{name,
                                        sha256, right, pools, prefix, created_at}``
                                        (producer/tokens.py). Only the SHA-256 of a
                                        secret is stored, never the secret.
``warmpool:ui_session:<sha>``   string  a dashboard session (the SHA-256 of its cookie) ->
                                        the SHA-256 of the token it was opened with; TTL
                                        UI_SESSION_TTL_S (producer/gateway/access.py)
==============================  ======  ===================================================
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

LOST_KEEP = 100
EVENTS_KEEP = 10_000  # the event stream's bound (XADD MAXLEN ~): a reader further behind resumes at the oldest
DEAD_LETTER_KEEP = 100
TOP_UP_COALESCE_MS = 5_000
REFRESH_SOON_MS = 1_000
REFRESH_LOCK_TTL_S = 120  # the aws jobs' hard time limit: a refresh never holds it longer
UNREADY_WINDOW_S = 3_600
# A withdrawn request outlives every job of its own: an assign job expires at
# its caller's deadline (at most MAX_WAIT_S after it was sent), plus slack.
WITHDRAWN_KEEP_S = 3_600 + 600
EVENTS_KEEP = 10_000  # approximate (MAXLEN ~): Redis trims whole stream nodes
TOKENS_KEY = "warmpool:tokens"
UI_SESSION_PREFIX = "warmpool:ui_session:"
UI_SESSION_TTL_S = 3_600


@dataclass(frozen=True)
class PoolKeys:
    """The key names of one pool (one Auto Scaling Group)."""

    machines: str
    idle: str
    projects: str
    group: str
    lost: str
    top_up: str
    leases: str
    waiters: str
    waiter_data: str
    waiter_seq: str
    unready: str
    refresh_soon: str
    capacity_lock: str
    refresh_lock: str
    aws_calls: str
    aws_errors: str
    withdrawn: str
    refresh_seq: str
    dead_letters: str
    dead_reasons: str
    events: str
    webhooks: str

    # Every pool's ``group`` hash, for finding pool state no configured pool uses.
    GROUP_PATTERN = "warmpool:{*}:group"

    @staticmethod
    def namespace_of(group_key: str) -> str | None:
        """The namespace of a ``warmpool:{<namespace>}:group`` key (None: not one)."""
        if group_key.startswith("warmpool:{") and group_key.endswith("}:group"):
            return group_key[len("warmpool:{") : -len("}:group")]
        return None

    @classmethod
    def for_group(cls, asg_name: str) -> PoolKeys:
        """The keys of the pool whose state namespace is ``asg_name`` (its group's name unless configured)."""
        prefix = f"warmpool:{{{asg_name}}}:"
        return cls(
            machines=prefix + "machines",
            idle=prefix + "idle",
            projects=prefix + "projects",
            group=prefix + "group",
            lost=prefix + "lost",
            top_up=prefix + "top_up",
            leases=prefix + "leases",
            waiters=prefix + "waiters",
            waiter_data=prefix + "waiter_data",
            waiter_seq=prefix + "waiter_seq",
            unready=prefix + "unready",
            refresh_soon=prefix + "refresh_soon",
            capacity_lock=prefix + "capacity_lock",
            refresh_lock=prefix + "refresh_lock",
            aws_calls=prefix + "aws_calls",
            aws_errors=prefix + "aws_errors",
            withdrawn=prefix + "withdrawn",
            refresh_seq=prefix + "refresh_seq",
            dead_letters=prefix + "dead_letters",
            dead_reasons=prefix + "dead_reasons",
            events=prefix + "events",
            webhooks=prefix + "webhooks",
        )

    def all(self) -> tuple[str, ...]:
        return astuple(self)


def ui_session_key(session_sha256: str) -> str:
    """``warmpool:ui_session:<sha256 hex>``: one dashboard session (see the docstring)."""
    return UI_SESSION_PREFIX + session_sha256


@dataclass(frozen=True)
class EconomicsKeys:
    """The key names of one pool's economics ledger (tasks.state.redis_ledger)."""

    figures: str
    launch: str
    claims: str
    since: str
    policy: str
    demand_prefix: str  # + day index

    @classmethod
    def for_group(cls, asg_name: str) -> EconomicsKeys:
        prefix = f"warmpool:{{{asg_name}}}:econ:"
        return cls(
            figures=prefix + "figures",
            launch=prefix + "launch",
            claims=prefix + "claims",
            since=prefix + "since",
            policy=prefix + "policy",
            demand_prefix=prefix + "demand:",
        )

    def demand(self, day: int) -> str:
        return f"{self.demand_prefix}{day}"


def demo_owner_key(asg_name: str) -> str:
    """``warmpool:{<asg name>}:demo``: the demo's claim on a Redis it did not start (see the docstring)."""
    return f"warmpool:{{{asg_name}}}:demo"

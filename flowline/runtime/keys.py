"""Where a queue lives in Redis.

Every key of one queue shares the hash tag ``{name}``, so one Lua call per queue is atomic
and the layout works unchanged on Redis Cluster.

    flowline:{q}:jobs        stream of ready jobs (consumer group ``flowline``)
    flowline:{q}:urgent      stream of ready jobs with priority > 0, read before ``jobs``
    flowline:{q}:delayed     zset: job id -> due time (ms) for delayed jobs and retries
    flowline:{q}:dead        stream of dead letters (jobs that exhausted their attempts)
    flowline:{q}:paused      set while the queue is paused: no process claims its jobs
    flowline:{q}:cancel      zset: job id -> when its cancel was asked (ms), for held jobs
    flowline:{q}:rate[:<t>]  zset: the queue's (or topic t's) job starts in its rate's window
    flowline:{q}:active      hash: group -> its jobs in the ready streams (at most its limit)
    flowline:{q}:group:<g>   list: ids of group g's jobs waiting for a slot, oldest first
    flowline:{q}:waiting     how many jobs wait in all the groups' lists
    flowline:{q}:job:<id>    hash: state, topic, attempt, progress, result, error, timestamps
    flowline:{q}:stats:<n>   hash: jobs completed / failed in the n-th 10-second window
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "flowline"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The Redis keys of one queue (or of one pipeline's stream-side dead letters)."""

    name: str

    @property
    def prefix(self) -> str:
        return f"flowline:{{{self.name}}}:"

    @property
    def jobs(self) -> str:
        return self.prefix + "jobs"

    @property
    def urgent(self) -> str:
        return self.prefix + "urgent"

    @property
    def streams(self) -> tuple[str, str]:
        """Both ready streams, urgent first."""
        return (self.urgent, self.jobs)

    @property
    def delayed(self) -> str:
        return self.prefix + "delayed"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    @property
    def paused(self) -> str:
        return self.prefix + "paused"

    @property
    def cancels(self) -> str:
        return self.prefix + "cancel"

    def rate(self, topic: str = "") -> str:
        """The window of the queue's rate, or of topic `topic`'s."""
        return self.prefix + ("rate:" + topic if topic else "rate")

    @property
    def active(self) -> str:
        return self.prefix + "active"

    @property
    def waiting(self) -> str:
        return self.prefix + "waiting"

    def group(self, group: str) -> str:
        return self.prefix + "group:" + group

    def marks(self, source: str) -> str:
        """Dedup marks of the jobs written from `source`'s messages (scored by sequence)."""
        return self.prefix + "seen:" + source

    @property
    def job_prefix(self) -> str:
        return self.prefix + "job:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def stats(self, bucket: int) -> str:
        """Counts of the `bucket`-th time window (see `runtime.inspect.STATS_BUCKET`)."""
        return f"{self.prefix}stats:{bucket}"


def stream_dead_letters(pipeline: str) -> QueueKeys:
    """Keys holding dead letters of a pipeline's stream side (undecodable or unroutable)."""
    return QueueKeys(f"stream:{pipeline}")


def fan_in_keys(pipeline: str, origin: str) -> tuple[str, str]:
    """The meta hash and done set of the stream message `origin` (``<stream>:<sequence>``);
    both share one hash tag, so the fan-in script touches a single slot."""
    base = f"flowline:fanin:{{{pipeline}:{origin}}}"
    return base, base + ":done"


def cron_key(pipeline: str, topic: str) -> str:
    """The key whose value is the last cron tick fired (ms), shared by every process."""
    return f"flowline:{{cron:{pipeline}}}:{topic}"

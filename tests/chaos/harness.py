"""The chaos harness: publish at a steady rate while faults are injected, then audit every job.

A run starts `flowline worker tests.apps.chaos_app:pipeline` processes, publishes events
``{"n": n, "jobs": k}`` with plain nats-py (each with a ``Nats-Msg-Id``, retried until
JetStream acks it), and for the same period injects one kind of fault:

- ``workers``: SIGKILL a random ready worker every 1-2 s and start a replacement;
- ``redis``: SIGKILL redis-server, keep it down for 1 s, start it again on the same AOF;
- ``nats``: stop nats-server (SIGTERM and SIGKILL in turn), down 1 s, same port and store.

Then it waits until nothing is pending anywhere and audits the handlers' own records
(``chaos:runs``, see tests/apps/chaos_app.py) against what was published and what the
servers still hold. `Report.line` prints the figures on one line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats
import nats.errors
from nats.js import JetStreamContext
from redis.asyncio import Redis

from flowline.backends.jetstream import ensure_stream
from flowline.runtime.keys import GROUP, QueueKeys, stream_dead_letters
from flowline.servers import LocalServers
from tests.apps import chaos_app
from tests.conftest import WorkerProcess

APP = "tests.apps.chaos_app:pipeline"
SCENARIOS = ("workers", "redis", "nats")
# Warnings a worker logs per job it takes over are expected in bulk; the rest are fault reports
# whose rate shows whether a loop backs off or spins.
PER_JOB_WARNINGS = frozenset(
    {
        "reclaimed job from a worker that stopped",
        "lost claim on job; stopping our run",
        "job failed",  # the planned first-attempt failures of flaky jobs
    }
)


@dataclass(frozen=True)
class Size:
    """How big one chaos run is."""

    events: int
    workers: int
    faults_for: float  # seconds of publishing, with faults injected all along
    server_restarts: int  # for the redis and nats scenarios
    settle_timeout: float  # seconds allowed to drain once publishing and faults stop
    slow_every: int = 7  # every n-th event has one slow job, so kills land mid-job
    long_every: int = 40  # ... a job outliving the visibility timeout, and an urgent one
    flaky_every: int = 11  # ... one job that fails its first attempt (retried via delayed)
    urgent_every: int = 5  # ... one job with priority (the urgent stream)
    concurrency: int = 20


SIZES = {
    "small": Size(events=400, workers=3, faults_for=9.0, server_restarts=3, settle_timeout=60),
    "full": Size(events=3600, workers=4, faults_for=45.0, server_restarts=8, settle_timeout=240),
}


def jobs_of(n: int) -> int:
    """How many jobs event `n` fans out into (1 to 4; the long-job events override it with 2)."""
    return 1 + n % 4


@dataclass
class Run:
    """One call of the handler, from its ``start`` and (if it got there) ``done`` records."""

    token: str
    id: str
    n: int
    i: int
    attempt: int
    pid: int
    created: str
    start: float
    done: float | None = None
    failed: float | None = None  # when the planned first-attempt failure of a flaky job hit

    @property
    def end(self) -> float | None:
        return self.done if self.done is not None else self.failed


@dataclass
class Report:
    """What one chaos run did and what the audit found."""

    scenario: str
    size: str
    events: int = 0
    jobs: int = 0
    finished: int = 0
    repeats: int = 0
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    hash_problems: list[str] = field(default_factory=list)
    dead_letters: int = 0
    leftovers: dict[str, int] = field(default_factory=dict)
    stored_events: int = 0
    interrupted: int = 0
    unrecovered: list[str] = field(default_factory=list)
    attempt_regressions: list[str] = field(default_factory=list)
    max_recovery: float = 0.0  # killed run's start -> the job's next start
    max_takeover: float = 0.0  # SIGKILL -> the next start of a job the killed worker ran
    median_takeover: float = 0.0
    # SIGKILL -> the first of the killed worker's jobs claimed by another worker: how fast the
    # reclaim mechanism reacts, before any wait for a free slot (max over kills)
    max_first_reclaim: float = 0.0
    planned_failures: int = 0
    lost_claims: int = 0
    lost_mid_run: list[str] = field(default_factory=list)
    kills: int = 0
    restarts: int = 0
    publish_retries: int = 0
    redelivered: int = 0
    crashed: list[str] = field(default_factory=list)
    bad_exits: list[str] = field(default_factory=list)
    max_warnings_per_s: int = 0
    max_idle_cpu: float = 0.0
    log_counts: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    settled: bool = False
    settle_seconds: float = 0.0
    logs: str = ""

    def line(self) -> str:
        """The figures of the run on one line."""
        return (
            f"chaos {self.scenario}/{self.size} seed={self.seed}: "
            f"events={self.events} jobs={self.jobs} "
            f"finished={self.finished} repeats={self.repeats} "
            f"duplicates={len(self.duplicates)} dead_letters={self.dead_letters} "
            f"max_recovery={self.max_recovery:.2f}s kills={self.kills} "
            f"restarts={self.restarts} | max_takeover={self.max_takeover:.2f}s "
            f"median_takeover={self.median_takeover:.2f}s "
            f"max_first_reclaim={self.max_first_reclaim:.2f}s "
            f"interrupted={self.interrupted} "
            f"planned_failures={self.planned_failures} "
            f"missing={len(self.missing)} strays={len(self.strays)} "
            f"overlaps={len(self.overlaps)} leftovers={self.leftovers} "
            f"lost_claims={self.lost_claims} (mid-run: {len(self.lost_mid_run)}) "
            f"stored_events={self.stored_events} publish_retries={self.publish_retries} "
            f"redelivered={self.redelivered} max_warnings_per_s={self.max_warnings_per_s} "
            f"max_idle_cpu={self.max_idle_cpu:.0%} settle={self.settle_seconds:.1f}s "
            f"log={self.log_counts}"
        )


class ChaosRun:
    """One scenario on the session servers, with workers from the `worker` fixture factory."""

    def __init__(
        self,
        scenario: str,
        size_name: str,
        servers: LocalServers,
        start_worker: Callable[..., WorkerProcess],
        *,
        seed: int | None = None,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        self.scenario = scenario
        self.size = SIZES[size_name]
        self.report = Report(scenario, size_name)
        self.servers = servers
        self.start_worker = start_worker
        env_seed = os.environ.get("FLOWLINE_CHAOS_SEED")
        if seed is None:
            seed = int(env_seed) if env_seed else random.randrange(1 << 30)
        self.report.seed = seed
        self.rng = random.Random(seed)
        self.workers: list[WorkerProcess] = []
        self.killed: dict[int, float] = {}  # pid -> when it was SIGKILLed (time.time())
        self.seqs: dict[int, int] = {}  # event number -> stream sequence
        self.job_counts: dict[int, int] = {}  # event number -> jobs it fans out into
        # (pid, job id, when) of every "lost claim" warning
        self.lost_claims: list[tuple[int, str, float]] = []
        # (job id, when) of every "reclaimed job from a worker that stopped" line
        self.reclaims: list[tuple[str, float]] = []
        self.stream = ""
        self.queue = QueueKeys(chaos_app.QUEUE)

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> Report:
        """Publish under faults, wait for quiescence, stop the workers, audit."""
        self.redis = Redis.from_url(self.servers.redis_url)
        self.nc = await nats.connect(
            self.servers.nats_url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=_expected,  # connection errors during a NATS restart are the point
        )
        js = self.nc.jetstream()
        try:
            self.stream = await ensure_stream(js, chaos_app.SUBJECT)
            await asyncio.gather(*(self._spawn().ready(60) for _ in range(self.size.workers)))
            await asyncio.gather(self._publish(js), self._inject())
            started = time.monotonic()
            self.report.settled = await self._settle(js)
            self.report.settle_seconds = time.monotonic() - started
            self.report.max_idle_cpu = await idle_cpu([w for w in self.workers if alive(w)])
            await self._stop_workers()
            self._read_logs()
            await self._audit(js)
        finally:
            await self.nc.close()
            await self.redis.aclose()
        return self.report

    def _spawn(self) -> WorkerProcess:
        proc = self.start_worker(APP, "--concurrency", str(self.size.concurrency), "--grace", "5")
        self.workers.append(proc)
        return proc

    async def _publish(self, js: JetStreamContext) -> None:
        """Publish every event on a steady schedule, retrying each until JetStream acks it."""
        size = self.size
        interval = size.faults_for / size.events
        tag = uuid.uuid4().hex[:8]
        t0 = time.monotonic()
        for n in range(size.events):
            delay = t0 + n * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event: dict[str, Any] = {"n": n, "jobs": jobs_of(n)}
            if n % size.long_every == size.long_every // 2:
                # Its heartbeats must keep the long job; the urgent short one beside it is
                # written in the same millisecond, so its entry id often equals the long one's.
                event.update(jobs=2, slow=chaos_app.VISIBILITY * 1.5, urgent=True)
            elif n % size.slow_every == 0:
                event["slow"] = round(self.rng.uniform(0.2, 0.8), 3)
            if n % size.flaky_every == 3:
                event["flaky"] = True
            if n % size.urgent_every == 1:
                event["urgent"] = True
            self.seqs[n] = await self._publish_one(js, json.dumps(event).encode(), f"{tag}:{n}")
            self.job_counts[n] = event["jobs"]

    async def _publish_one(self, js: JetStreamContext, payload: bytes, msg_id: str) -> int:
        # The same Nats-Msg-Id on every try: a try whose ack was lost is not stored twice.
        give_up = time.monotonic() + 60
        while True:
            try:
                ack = await js.publish(
                    chaos_app.SUBJECT, payload, headers={"Nats-Msg-Id": msg_id}, timeout=2
                )
                return int(ack.seq)
            except (nats.errors.Error, TimeoutError, OSError):
                self.report.publish_retries += 1
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.2)

    async def _inject(self) -> None:
        end = time.monotonic() + self.size.faults_for
        if self.scenario == "workers":
            await self._kill_workers(end)
        else:
            await self._restart_server(end)

    async def _kill_workers(self, end: float) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(1.0, 2.0))
            if time.monotonic() >= end:
                return
            # Only workers that are up: killing one still importing would test nothing.
            ready = [w for w in self.workers if alive(w) and "flowline started" in w.output()]
            if not ready:
                continue
            victim = self.rng.choice(ready)
            self.killed[victim.pid] = time.time()
            victim.signal(signal.SIGKILL)
            await asyncio.to_thread(victim.proc.wait, 10)
            self.report.kills += 1
            self._spawn()
            self.report.restarts += 1

    async def _restart_server(self, end: float) -> None:
        count = self.size.server_restarts
        start = end - self.size.faults_for
        for k in range(count):
            when = start + self.size.faults_for * (k + 1) / (count + 1)
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            if self.scenario == "redis":
                # SIGKILL: with appendfsync always every acknowledged write is in the AOF.
                await asyncio.to_thread(self.servers.restart_redis, kill=True, down_for=1.0)
            else:
                await asyncio.to_thread(self.servers.restart_nats, kill=k % 2 == 1, down_for=1.0)
            self.report.kills += 1
            self.report.restarts += 1

    async def _settle(self, js: JetStreamContext) -> bool:
        """Wait until nothing is pending anywhere, seen twice in a row; False on timeout."""
        deadline = time.monotonic() + self.size.settle_timeout
        calm = 0
        while time.monotonic() < deadline:
            try:
                self.report.leftovers = await self._leftovers(js)
            except Exception as exc:  # a server may still be coming back
                self.report.leftovers = {repr(exc): 1}
            calm = calm + 1 if not self.report.leftovers else 0
            if calm >= 2:
                return True
            await asyncio.sleep(0.5)
        return False

    async def _leftovers(self, js: JetStreamContext) -> dict[str, int]:
        """Whatever is still queued, claimed, delayed or unacked (empty when quiescent)."""
        q = self.queue
        counts: dict[str, int] = {}
        for stream in q.streams:  # urgent, jobs
            name = stream.rsplit(":", 1)[1]
            counts[f"{name}_stream"] = int(await self.redis.xlen(stream))
            counts[f"{name}_claimed"] = int((await self.redis.xpending(stream, GROUP))["pending"])
        info = await js.consumer_info(self.stream, chaos_app.pipeline.name)
        counts |= {
            "delayed": int(await self.redis.zcard(q.delayed)),
            "js_pending": int(info.num_pending or 0),
            "js_ack_pending": int(info.num_ack_pending or 0),
        }
        return {k: v for k, v in counts.items() if v}

    async def _stop_workers(self) -> None:
        """SIGTERM the live workers; each must exit 0 within its grace period."""
        live = [w for w in self.workers if alive(w)]
        for w in self.workers:
            if w.pid not in self.killed and not alive(w):
                self.report.bad_exits.append(f"pid {w.pid} exited by itself: {w.proc.returncode}")
        for w in live:
            w.signal(signal.SIGTERM)
        for w in live:
            code = await w.wait(30)
            if code != 0:
                self.report.bad_exits.append(f"pid {w.pid} exited {code} on SIGTERM")

    # -- auditing -------------------------------------------------------------------------------

    async def _audit(self, js: JetStreamContext) -> None:
        """Check the handlers' records and the servers against what was published.

        Lost work: every published event x its job count must have a ``done`` record under
        the id ``<stream>:<seq>:<index>`` (``missing`` otherwise).

        Duplicates, i.e. a second copy of a job enqueued or run beside the first. Redis
        gives no count of XADDs per id, so two facts that one copy cannot produce are
        checked instead:

        - every run of one job id read the same ``created`` from the job's hash: the
          enqueue script writes it once, and a copy enqueued again after the hash was lost
          or replaced would carry a new one;
        - no two finished runs of one job id share an attempt number: a single copy only
          runs again through reclaim (HINCRBY attempt) or retry (attempt + 1), and the
          shutdown hand-back (same attempt) only hands back runs that did not finish; a
          second copy starts again at attempt 1.

        Jobs that finished more than once with distinct attempts are ``repeats``: a worker
        died (or lost its claim) after its handler finished but before the completion was
        written, which at-least-once delivery allows. ``strays`` are ids nobody published
        (an event stored twice by JetStream would show up here), and ``overlaps`` are two
        finished runs of one job whose start..done intervals intersect, i.e. two live
        workers ran it at the same time.
        """
        r = self.report
        r.events = len(self.seqs)
        expected = {
            f"{self.stream}:{seq}:{i}": (n, i)
            for n, seq in self.seqs.items()
            for i in range(self.job_counts[n])
        }
        r.jobs = len(expected)
        runs = await self._runs()
        by_id: dict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_id[run.id].append(run)

        r.strays = sorted(set(by_id) - set(expected))
        for job_id, (n, i) in expected.items():
            done = [x for x in by_id.get(job_id, []) if x.done is not None]
            if not done:
                r.missing.append(job_id)
                continue
            r.finished += 1
            r.repeats += len(done) > 1
            if any((x.n, x.i) != (n, i) for x in by_id[job_id]):
                r.duplicates.append(f"{job_id}: ran with data of another event")
            created = {x.created for x in by_id[job_id]}
            if len(created) > 1:
                r.duplicates.append(f"{job_id}: created {sorted(created)}")
            twice = [a for a, c in Counter(x.attempt for x in done).items() if c > 1]
            if twice:
                r.duplicates.append(f"{job_id}: finished twice at attempt {twice}")
            ordered = sorted(done, key=lambda x: x.start)
            for a, b in itertools.pairwise(ordered):
                assert a.done is not None
                if b.start < a.done:
                    r.overlaps.append(
                        f"{job_id}: pid {a.pid} attempt {a.attempt} {a.start:.3f}..{a.done:.3f}"
                        f" and pid {b.pid} attempt {b.attempt} from {b.start:.3f}"
                    )

        delays, takeovers = [], []
        r.planned_failures = sum(run.failed is not None for run in runs)
        for run in runs:
            if run.end is not None or run.pid not in self.killed:
                continue
            r.interrupted += 1
            later = [x for x in by_id[run.id] if x.start > run.start]
            if not later:
                r.unrecovered.append(f"{run.id} attempt {run.attempt} in pid {run.pid}")
                continue
            nxt = min(later, key=lambda x: x.start)
            delays.append(nxt.start - run.start)
            takeovers.append(nxt.start - self.killed[run.pid])
            if nxt.attempt <= run.attempt:
                r.attempt_regressions.append(
                    f"{run.id}: attempt {run.attempt} killed, rerun as attempt {nxt.attempt}"
                )
        r.max_recovery = max(delays, default=0.0)
        r.max_takeover = max(takeovers, default=0.0)
        r.median_takeover = statistics.median(takeovers) if takeovers else 0.0
        r.max_first_reclaim = self._first_reclaims(runs)

        r.lost_claims = len(self.lost_claims)
        for pid, job_id, when in self.lost_claims:
            if self._lost_mid_run(by_id.get(job_id, []), pid, when):
                r.lost_mid_run.append(f"{job_id} in pid {pid} at {when:.3f}")

        await self._audit_hashes(expected)
        q = self.queue
        dead_keys = [q.dead, stream_dead_letters(chaos_app.pipeline.name).dead]
        r.dead_letters = sum([int(await self.redis.xlen(k)) for k in dead_keys])
        r.leftovers = await self._leftovers(js)
        info = await js.stream_info(self.stream)
        r.stored_events = int(info.state.messages)
        consumer = await js.consumer_info(self.stream, chaos_app.pipeline.name)
        # Deliveries beyond one per message (a consumer restored from an older snapshot after a
        # SIGKILLed nats-server may have counted fewer).
        delivered = consumer.delivered
        if delivered is not None:
            r.redelivered = int(delivered.consumer_seq or 0) - int(delivered.stream_seq or 0)
        if len(set(self.seqs.values())) != len(self.seqs):
            r.duplicates.append("two events were acked with the same stream sequence")

    @staticmethod
    def _lost_mid_run(runs: list[Run], pid: int, when: float) -> bool:
        """Whether a "lost claim" warning interrupted a run, rather than followed its end.

        The heartbeat also reports a claim lost when the worker's own completion (or failure)
        acked the entry between the heartbeat's snapshot of its claims and its script: that
        run had ended, and no other worker started the job while it ran.
        """
        mine = [x for x in runs if x.pid == pid and x.start <= when]
        if not mine:
            return True  # claimed but never started (read ahead into the backlog)
        run = max(mine, key=lambda x: x.start)
        if run.end is None:
            return True
        return any(x.pid != pid and run.start <= x.start <= run.end for x in runs)

    async def _runs(self) -> list[Run]:
        raw = await self.redis.hgetall(chaos_app.RUNS)
        records = [json.loads(v) for v in raw.values()]
        runs = {
            x["run"]: Run(
                x["run"], x["id"], x["n"], x["i"], x["attempt"], x["pid"], x["created"], x["t"]
            )
            for x in records
            if x["event"] == "start"
        }
        for x in records:
            if x["event"] == "done":
                runs[x["run"]].done = x["t"]
            elif x["event"] == "failed":
                runs[x["run"]].failed = x["t"]
        return list(runs.values())

    async def _audit_hashes(self, expected: dict[str, tuple[int, int]]) -> None:
        """Every expected job has exactly one hash, completed; no other job hash exists."""
        prefix = self.queue.job_prefix
        states: dict[str, str] = {}
        async for key in self.redis.scan_iter(match=prefix + "*", count=1000):
            job_id = key.decode()[len(prefix) :]
            state = await self.redis.hget(key, "state")
            states[job_id] = state.decode() if state is not None else ""
        r = self.report
        for job_id in sorted(set(expected) - set(states)):
            r.hash_problems.append(f"{job_id}: no job hash")
        for job_id in sorted(set(states) - set(expected)):
            r.hash_problems.append(f"{job_id}: hash of a job nobody published")
        for job_id, state in sorted(states.items()):
            if job_id in expected and state != "completed":
                r.hash_problems.append(f"{job_id}: state {state!r}")

    def _first_reclaims(self, runs: list[Run]) -> float:
        """Per kill, how long until another worker claimed the first of the victim's jobs."""
        held: dict[int, set[str]] = defaultdict(set)
        for run in runs:
            if run.end is None and run.pid in self.killed:
                held[run.pid].add(run.id)
        firsts = []
        for pid, ids in held.items():
            killed = self.killed[pid]
            claimed = [when for job_id, when in self.reclaims if job_id in ids and when > killed]
            if claimed:
                firsts.append(min(claimed) - killed)
        return max(firsts, default=0.0)

    def _read_logs(self) -> None:
        """Crashes, exits and how fast each worker logged fault warnings."""
        r = self.report
        counts: Counter[str] = Counter()
        for w in self.workers:
            per_second: Counter[int] = Counter()
            for line in w.lines():
                event = str(line.get("event", ""))
                level = line.get("level")
                if level in ("warning", "error"):
                    counts[event] += 1
                if event == "reclaimed job from a worker that stopped":
                    when = datetime.fromisoformat(line["timestamp"]).timestamp()
                    self.reclaims.append((str(line.get("job")), when))
                if event == "lost claim on job; stopping our run":
                    when = datetime.fromisoformat(line["timestamp"]).timestamp()
                    self.lost_claims.append((w.pid, str(line.get("job")), when))
                if event == "a flowline loop crashed; stopping":
                    r.crashed.append(f"pid {w.pid}: {line.get('task')}: {line.get('error')}")
                if level == "warning" and event not in PER_JOB_WARNINGS and "timestamp" in line:
                    per_second[int(datetime.fromisoformat(line["timestamp"]).timestamp())] += 1
            r.max_warnings_per_s = max(r.max_warnings_per_s, max(per_second.values(), default=0))
        r.log_counts = dict(counts.most_common())
        if self.workers:
            r.logs = str(self.workers[0].log_path.parent)


async def _expected(exc: Exception) -> None:
    pass


def alive(w: WorkerProcess) -> bool:
    return w.proc.poll() is None


async def idle_cpu(workers: list[WorkerProcess], window: float = 2.0) -> float:
    """The largest share of one CPU a worker used over `window` seconds (spin detection)."""
    if not workers:
        return 0.0
    before = {w.pid: cpu_seconds(w.pid) for w in workers}
    t0 = time.monotonic()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - t0
    return max((cpu_seconds(w.pid) - before[w.pid]) / elapsed for w in workers)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ensure_servers(servers: LocalServers) -> None:
    """Start redis-server or nats-server again if a fault left either down."""
    if servers.redis is None or servers.redis.poll() is not None:
        servers.start_redis()
    if servers.nats is None or servers.nats.poll() is not None:
        servers.start_nats()

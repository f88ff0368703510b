"""``pkifed daemon``: reconcile on a schedule, with leader election.

Every replica runs the schedule, but only the holder of the state store's lease
applies. The others plan, which checks that providers and targets respond, and
report ready. The leader renews the lease every third of its TTL, so when it
dies another replica takes over within one TTL.

A leader that stalls (a long GC pause, SIGSTOP, a suspended VM) may wake up
believing it still leads. Its fencing token shows the state store otherwise:
the reconciler checks the token before each phase and inside the transaction of
each state write, and the audit log checks it in the transaction of each
append, so a replica that lost the lease records nothing. A pass also holds the
run lock, which keeps ``pkifed apply`` and the daemon from running at once.

NOTE: the token guards writes to the state store only. A stalled leader that
wakes between its last fence check and a provider call or a target upload
still makes that call; the result is never recorded, and what it uploads is
the content the store already described.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

# APScheduler 3.x ships no type information.
from apscheduler.executors.pool import (  # type: ignore[import-untyped]
    ThreadPoolExecutor as SchedulerThreadPool,
)
from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
    BackgroundScheduler,
)
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy.orm import Session

from pkifed.config.daemon import ScheduleConfig, cron_trigger, parse_listen
from pkifed.config.loader import LoadedConfig, load_config
from pkifed.errors import PkifedError, StateError
from pkifed.federation.audit import AuditLog
from pkifed.federation.locking import exclusive_run
from pkifed.federation.store import Lease, Store
from pkifed.sync.events import Event, EventDispatcher, build_sinks, event_of
from pkifed.sync.http import HealthServer, Readiness
from pkifed.sync.metrics import Metrics, ObservedRuntime
from pkifed.sync.reconcile import ActionOutcome, ApplyResult, Reconciler, utc_now

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]

LEASE_PREFIX = "pkifed-daemon/"


class LeaseLostError(StateError):
    """This replica's lease passed to another replica, so it must not write."""


def default_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PassReport:
    """The result of one pass, as /readyz and the logs show it."""

    role: str
    started_at: datetime.datetime
    ended_at: datetime.datetime
    succeeded: bool
    message: str
    actions: int = 0


class LeaderElector:
    """Acquires and renews the daemon's lease in the state store."""

    def __init__(
        self,
        store: Store,
        name: str,
        holder: str,
        ttl: datetime.timedelta,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self.metrics = metrics
        self._lease: Lease | None = None
        self._lock = threading.Lock()

    def tick(self) -> Lease | None:
        """Renew the lease when held, or try to acquire it; return what is held."""
        with self._lock:
            now = self.clock()
            held = self._lease
            try:
                lease = None
                if held is not None:
                    lease = self.store.renew_lease(held, self.ttl, now)
                if lease is None:
                    lease = self.store.try_acquire_lease(
                        self.name, self.holder, self.ttl, now
                    )
            except StateError as error:
                # Without the store the lease cannot be confirmed, so this
                # replica keeps it only until it would expire anyway.
                logger.error("lease %s: renewing failed: %s", self.name, error)
                lease = held if held is not None and held.expires_at > now else None
            self._set(lease)
            return lease

    def _set(self, lease: Lease | None, *, released: bool = False) -> None:
        previous = self._lease
        self._lease = lease
        self.metrics.leader.set(1 if lease is not None else 0)
        self.metrics.lease_token.set(lease.token if lease is not None else 0)
        if lease is not None and (previous is None or previous.token != lease.token):
            logger.info(
                "lease %s: %s is the leader with fencing token %d, until %s",
                self.name,
                self.holder,
                lease.token,
                _iso(lease.expires_at),
            )
        elif lease is None and previous is not None and released:
            logger.info(
                "lease %s: %s released the lease (fencing token %d)",
                self.name,
                self.holder,
                previous.token,
            )
        elif lease is None and previous is not None:
            logger.warning(
                "lease %s: %s lost the lease (fencing token %d); applying stops "
                "and this replica only plans",
                self.name,
                self.holder,
                previous.token,
            )

    def current(self) -> Lease | None:
        """Return the lease while it is held and unexpired by this replica's clock."""
        with self._lock:
            lease = self._lease
            if lease is not None and lease.expires_at <= self.clock():
                return None
            return lease

    def lost(self, lease: Lease) -> None:
        """Forget ``lease`` after a fencing check rejected it."""
        with self._lock:
            if self._lease is not None and self._lease.token == lease.token:
                self._set(None)

    def release(self) -> None:
        with self._lock:
            lease = self._lease
            if lease is None:
                return
            try:
                self.store.release_lease(lease)
            except StateError as error:
                logger.error("lease %s: releasing failed: %s", self.name, error)
            self._set(None, released=True)


@dataclass
class _Running:
    """The parts of the daemon that a reload replaces together."""

    config: LoadedConfig
    runtime: ObservedRuntime
    dispatcher: EventDispatcher
    expiring_sent: set[tuple[str, str]] = field(default_factory=set)


class Daemon:
    """Runs reconcile passes on a schedule and serves health and metrics."""

    def __init__(
        self,
        config: LoadedConfig,
        *,
        clock: Clock = utc_now,
        replica_id: str | None = None,
        listen: str | None = None,
    ) -> None:
        self.clock = clock
        self.replica_id = (
            replica_id or config.model.daemon.replica_id or default_replica_id()
        )
        self.listen = listen or config.model.daemon.listen
        self.metrics = Metrics()
        self.store = Store(config.state_url)
        self.audit = AuditLog(self.store)
        self.elector = LeaderElector(
            self.store,
            LEASE_PREFIX + config.model.name,
            self.replica_id,
            config.model.daemon.lease_ttl,
            clock,
            self.metrics,
        )
        self._running = self._build(config)
        self._pass_lock = threading.Lock()
        self._last: PassReport | None = None
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self._scheduler: Any = None
        self.http: HealthServer | None = None

    @property
    def config(self) -> LoadedConfig:
        return self._running.config

    def _build(self, config: LoadedConfig) -> _Running:
        sinks = build_sinks(config.model.events, config.base_dir)
        return _Running(
            config,
            ObservedRuntime(config, self.metrics),
            EventDispatcher(sinks, self.metrics),
        )

    # --- lifecycle ------------------------------------------------------------------

    def start(self, *, serve_http: bool = True, schedule: bool = True) -> None:
        """Open the store, serve HTTP, take part in the election and schedule passes."""
        self.store.initialise()
        if serve_http:
            host, port = parse_listen(self.listen)
            self.http = HealthServer(host, port, self.readiness, self.metrics.render)
            self.http.start()
        self.elector.tick()
        self._lease_thread = threading.Thread(
            target=self._renew_leases, name="lease", daemon=True
        )
        self._lease_thread.start()
        if schedule:
            self._start_scheduler(self.config.model.schedule)
        logger.info(
            "daemon: replica %s started for federation %s (state store %s)",
            self.replica_id,
            self.config.model.name,
            self.store.engine.url.render_as_string(hide_password=True),
        )

    def _renew_leases(self) -> None:
        while not self._stop.wait(self.elector.ttl.total_seconds() / 3):
            self.elector.tick()

    def _start_scheduler(self, schedule: ScheduleConfig) -> None:
        scheduler = BackgroundScheduler(
            timezone=datetime.UTC,
            executors={"default": SchedulerThreadPool(1)},
            job_defaults={
                "coalesce": schedule.coalesce,
                # Never two passes at once: a pass still running when the next
                # is due makes APScheduler skip that one.
                "max_instances": 1,
                "misfire_grace_time": int(schedule.misfire_grace_time.total_seconds()),
            },
        )
        scheduler.add_job(
            self._scheduled_pass,
            _trigger(schedule),
            id="reconcile",
            name="reconcile pass",
            next_run_time=datetime.datetime.now(datetime.UTC),
        )
        scheduler.start()
        self._scheduler = scheduler

    def _scheduled_pass(self) -> None:
        if not self._stop.is_set():
            self.run_pass()

    def stop(self) -> None:
        """Let the running pass finish, give up the lease and close everything."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        if self._lease_thread is not None:
            self._lease_thread.join(timeout=5)
        self.elector.release()
        if self.http is not None:
            self.http.stop()
        self._running.dispatcher.close()
        self._running.runtime.close()
        self.store.close()
        logger.info("daemon: replica %s stopped", self.replica_id)

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads the configuration."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, lambda signum, frame: self._reload_requested.set())
        while not self._stop.wait(0.2):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
        logger.info("daemon: stopping after the running pass")
        self.stop()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop.is_set():
            # A second signal means the caller will not wait for the pass.
            os._exit(128 + signum)
        self._stop.set()

    def run_once(self) -> int:
        """Run one pass as leader and return apply's exit status: 0 or 1."""
        self.store.initialise()
        try:
            if self.elector.tick() is None:
                logger.error(
                    "lease %s: another replica holds the lease, so this pass is "
                    "not run; stop the daemon or wait for its lease to expire",
                    self.elector.name,
                )
                return 1
            report = self.run_pass()
        finally:
            self.elector.release()
            self._running.dispatcher.close()
            self._running.runtime.close()
            self.store.close()
        return 0 if report.succeeded else 1

    # --- reloading ------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the configuration file again and use it if it is valid."""
        path = self.config.path
        try:
            config = load_config(path)
            if config.state_url != self.config.state_url:
                raise StateError(
                    "the state store changed, which needs a restart of the daemon"
                )
            running = self._build(config)
        except PkifedError as error:
            logger.error(
                "daemon: reloading %s failed, keeping the running configuration: %s",
                path,
                error,
            )
            return False
        if config.model.daemon.listen != self.config.model.daemon.listen:
            logger.warning(
                "daemon: the new listen address %s takes effect after a restart",
                config.model.daemon.listen,
            )
        with self._pass_lock:
            previous = self._running
            running.expiring_sent = previous.expiring_sent
            self._running = running
            self.elector.ttl = config.model.daemon.lease_ttl
            if self._scheduler is not None:
                self._scheduler.reschedule_job(
                    "reconcile", trigger=_trigger(config.model.schedule)
                )
        previous.dispatcher.close()
        previous.runtime.close()
        logger.info("daemon: reloaded %s", path)
        return True

    # --- passes ---------------------------------------------------------------------

    def run_pass(self) -> PassReport:
        """Apply as leader or plan as follower, then update metrics and readiness."""
        with self._pass_lock:
            running = self._running
            lease = self.elector.current()
            role = "leader" if lease is not None else "follower"
            started_at = self.clock()
            started = time.perf_counter()
            try:
                if lease is not None:
                    succeeded, message, actions = self._apply(running, lease)
                else:
                    succeeded, message, actions = self._plan(running)
            except PkifedError as error:
                if isinstance(error, LeaseLostError) and lease is not None:
                    self.elector.lost(lease)
                logger.error("daemon: %s pass failed: %s", role, error)
                succeeded, message, actions = False, str(error), 0
            duration = time.perf_counter() - started
            report = PassReport(
                role, started_at, self.clock(), succeeded, message, actions
            )
            self._record_pass(running, report, duration, lease)
            return report

    def _apply(self, running: _Running, lease: Lease) -> tuple[bool, str, int]:
        fence = self._fence(lease)
        with exclusive_run(running.config.state_url, purpose="daemon pass"):
            reconciler = Reconciler(
                running.config,
                self.store,
                running.runtime,
                clock=self.clock,
                on_progress=lambda outcome: self._on_progress(
                    running, lease, fence, outcome
                ),
                fence=fence,
            )
            results = reconciler.converge()
        return _summarise(results)

    def _plan(self, running: _Running) -> tuple[bool, str, int]:
        plan = Reconciler(
            running.config, self.store, running.runtime, clock=self.clock
        ).plan()
        message = (
            f"follower: planned {len(plan.actions)} actions for the leader, "
            f"{len(plan.problems)} blocked"
        )
        return True, message, 0

    def _fence(self, lease: Lease) -> Callable[[Session], None]:
        def fence(session: Session) -> None:
            try:
                self.store.check_fencing(session, lease.name, lease.token)
            except StateError as error:
                self.elector.lost(lease)
                raise LeaseLostError(str(error)) from error

        return fence

    def _on_progress(
        self,
        running: _Running,
        lease: Lease,
        fence: Callable[[Session], None],
        outcome: ActionOutcome,
    ) -> None:
        action = outcome.action
        self.metrics.count_outcome(outcome)
        now = self.clock()
        try:
            self.audit.append(
                at=now,
                actor=self.replica_id,
                fencing_token=lease.token,
                kind=str(action.kind),
                subject=action.object,
                outcome=outcome.outcome,
                reason=action.reason,
                message=outcome.message,
                fence=fence,
            )
        except StateError as error:
            self.metrics.audit_failures.inc()
            logger.error(
                "%s: the audit entry of %s (%s) was not appended: %s",
                action.object,
                action.kind,
                outcome.outcome,
                error,
            )
            if isinstance(error, LeaseLostError):
                # Events tell others what the federation did; a replica that
                # lost the lease did nothing that counts.
                return
        event = event_of(outcome, running.config.model.name, self.replica_id, now)
        if event is not None:
            running.dispatcher.submit([event])

    def _record_pass(
        self,
        running: _Running,
        report: PassReport,
        duration: float,
        lease: Lease | None,
    ) -> None:
        self.metrics.pass_duration.labels(report.role).observe(duration)
        result = "ok" if report.succeeded else "failed"
        self.metrics.passes.labels(report.role, result).inc()
        if report.succeeded:
            self.metrics.last_success.set(report.ended_at.timestamp())
            logger.info(
                "daemon: %s pass finished in %.2f s: %s",
                report.role,
                duration,
                report.message,
            )
        else:
            logger.warning(
                "daemon: %s pass failed after %.2f s: %s; will run again at the "
                "next scheduled time",
                report.role,
                duration,
                report.message,
            )
        self._last = report
        try:
            expiries = self._expiries(running)
        except StateError as error:
            logger.error("daemon: reading certificate expiry failed: %s", error)
            return
        self.metrics.set_expiry(
            {name: not_after for name, (_, not_after) in expiries.items()},
            report.ended_at,
        )
        if lease is not None and self.elector.current() is not None:
            running.dispatcher.submit(self._expiring_events(running, expiries))

    def _expiries(self, running: _Running) -> dict[str, tuple[str, datetime.datetime]]:
        expiries = {}
        with self.store.transaction() as session:
            for name in running.config.model.authorities:
                record = self.store.current_certificate(session, name)
                if record is not None:
                    expiries[name] = (record.serial, record.not_after)
        return expiries

    def _expiring_events(
        self, running: _Running, expiries: dict[str, tuple[str, datetime.datetime]]
    ) -> list[Event]:
        now = self.clock()
        window = running.config.model.events.expiring_within
        events = []
        for name, (serial, not_after) in sorted(expiries.items()):
            if not_after - now > window or (name, serial) in running.expiring_sent:
                continue
            running.expiring_sent.add((name, serial))
            events.append(
                Event(
                    type="expiring-soon",
                    federation=running.config.model.name,
                    object=f"authority {name}",
                    message=(
                        f"certificate serial {serial} expires at {_iso(not_after)}, "
                        f"within {window.days} days"
                    ),
                    at=now,
                    actor=self.replica_id,
                    authority=name,
                )
            )
        return events

    # --- readiness ------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Ready when the last pass succeeded and ended at most two passes ago.

        The limit is two scheduled passes plus the jitter, so one late or
        skipped pass does not make the replica unready.
        """
        leader = self.elector.current() is not None
        details: dict[str, Any] = {
            "replica": self.replica_id,
            "role": "leader" if leader else "follower",
        }
        last = self._last
        if last is None:
            return Readiness(False, "no pass has finished yet", details)
        details["last_pass"] = {
            "role": last.role,
            "ended_at": _iso(last.ended_at),
            "succeeded": last.succeeded,
            "message": last.message,
        }
        if not last.succeeded:
            return Readiness(False, f"the last pass failed: {last.message}", details)
        deadline = _overdue_after(self.config.model.schedule, last.ended_at)
        now = self.clock()
        if now > deadline:
            age = now - last.ended_at
            return Readiness(
                False,
                f"the last pass ended {age.total_seconds():.0f} s ago and the "
                f"schedule expected two passes since (by {_iso(deadline)})",
                details,
            )
        return Readiness(True, "the last pass succeeded", details)

    def flush_events(self, timeout: float = 30.0) -> bool:
        """Wait until queued events were handed to every sink."""
        return self._running.dispatcher.flush(timeout)


def _summarise(results: list[ApplyResult]) -> tuple[bool, str, int]:
    applied = [r for r in results if r.outcomes]
    last = results[-1]
    done = sum(1 for r in applied for o in r.outcomes if o.outcome == "done")
    failed = sum(len(r.failed) for r in applied)
    actions = sum(len(r.outcomes) for r in applied)
    succeeded = failed == 0 and not last.plan.problems
    message = (
        f"applied {done} actions in {len(applied)} passes; {failed} failed or "
        f"skipped, {len(last.plan.problems)} blocked, {len(last.plan.waiting)} "
        "waiting"
    )
    for problem in last.plan.problems:
        logger.warning("%s: blocked: %s", problem.object, problem.message)
    return succeeded, message, actions


def _trigger(schedule: ScheduleConfig) -> Any:
    if schedule.cron is not None:
        return cron_trigger(schedule.cron, schedule.jitter)
    every = schedule.every or datetime.timedelta(minutes=15)
    jitter = schedule.jitter
    return IntervalTrigger(
        seconds=every.total_seconds(),
        jitter=int(jitter.total_seconds()) if jitter else None,
        timezone=datetime.UTC,
    )


def _overdue_after(
    schedule: ScheduleConfig, ended_at: datetime.datetime
) -> datetime.datetime:
    """Return when a replica whose last pass ended at ``ended_at`` is overdue.

    That is two scheduled passes later plus the jitter: twice the interval, or
    the second cron fire time after ``ended_at``, so weekends and other gaps
    in a cron schedule do not count as missed passes.
    """
    jitter = schedule.jitter or datetime.timedelta(0)
    if schedule.every is not None:
        return ended_at + 2 * schedule.every + jitter
    trigger = cron_trigger(schedule.cron or "* * * * *")
    first = trigger.get_next_fire_time(None, ended_at)
    second = None
    if first is not None:
        second = trigger.get_next_fire_time(
            first, first + datetime.timedelta(seconds=1)
        )
    if second is None:
        # A schedule with no future fire times never makes the replica overdue.
        return datetime.datetime.max.replace(tzinfo=datetime.UTC)
    return second + jitter  # type: ignore[no-any-return]

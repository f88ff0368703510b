"""The ``pkifed`` command line."""

from __future__ import annotations

import contextlib
import getpass
import logging
import re
import socket
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from pkifed import __version__
from pkifed.errors import ConfigError, PkifedError

# The command line imports the rest of pkifed, SQLAlchemy, pydantic and the
# cloud SDKs inside the commands that use them, so `pkifed --help` and shell
# completion start without paying for them.
if TYPE_CHECKING:
    from pkifed.config.loader import LoadedConfig
    from pkifed.federation.runtime import Runtime
    from pkifed.federation.store import Store
    from pkifed.sync.plan import Plan, PlanProblem
    from pkifed.sync.reconcile import ActionOutcome

# Choices shown in --help; tests check they equal the lists the modules define.
REPORT_FORMATS = ("table", "json", "csv", "markdown", "html")
SEVERITIES = ("info", "low", "medium", "high", "critical")
REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)

logger = logging.getLogger(__name__)


class OutputError(PkifedError):
    """An output file named on the command line cannot be written."""


CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Path of the federation file (YAML).",
)


def _reading_url(config: LoadedConfig) -> str:
    """The state URL for a command that only reads.

    A SQLite file that does not exist yet means nothing was applied, so an
    empty in-memory store replaces it instead of creating the file.
    """
    from sqlalchemy.engine import make_url

    url = make_url(config.state_url)
    database = url.database
    is_file = url.get_backend_name() == "sqlite" and database not in (
        None,
        "",
        ":memory:",
    )
    if is_file and not Path(str(database)).exists():
        return "sqlite://"
    return config.state_url


@contextmanager
def _session(
    config_path: Path, *, writing: bool
) -> Iterator[tuple[LoadedConfig, Store, Runtime]]:
    from pkifed.config.loader import load_config
    from pkifed.federation.locking import exclusive_run
    from pkifed.federation.runtime import Runtime
    from pkifed.federation.store import Store

    config = load_config(config_path)
    with contextlib.ExitStack() as stack:
        if writing:
            stack.enter_context(exclusive_run(config.state_url))
            store = Store(config.state_url)
        else:
            store = Store(_reading_url(config))
        stack.callback(store.close)
        store.initialise()
        runtime = stack.enter_context(Runtime(config))
        yield config, store, runtime


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pkifed")
@click.option(
    "-v", "--verbose", is_flag=True, help="Log debug detail and show tracebacks."
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Format of log lines on standard error.",
)
@click.pass_context
def cli(context: click.Context, verbose: bool, log_format: str) -> None:
    """Keep a CA hierarchy consistent across HSMs and cloud KMSs."""
    from pkifed.sync.logs import configure_logging

    context.obj = {"verbose": verbose}
    configure_logging(verbose=verbose, json_lines=log_format == "json")


@cli.command()
@CONFIG_OPTION
def validate(config_path: Path) -> None:
    """Check a federation file and report every problem at once."""
    from pkifed.config.loader import load_config

    config = load_config(config_path)
    model = config.model
    click.echo(
        f"{config.path}: valid: {_count(len(model.providers), 'provider')}, "
        f"{_count(len(model.authorities), 'authority', 'authorities')}, "
        f"{_count(len(model.targets), 'target')}, "
        f"{_count(len(model.bundles), 'bundle')}"
    )


@cli.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when nothing would change, 2 when changes are pending, 1 on error.",
)
def plan(config_path: Path, as_json: bool, detailed_exitcode: bool) -> None:
    """Show what apply would change, and why."""
    from pkifed.sync.reconcile import Reconciler

    with _session(config_path, writing=False) as (config, store, runtime):
        result = Reconciler(config, store, runtime).plan()
    if as_json:
        click.echo(result.to_json())
    else:
        _print_plan_text(result)
    if result.problems:
        sys.exit(1)
    if detailed_exitcode and not result.empty:
        sys.exit(2)


def _print_plan_text(result: Plan) -> None:
    for action in result.actions:
        click.echo(f"  {action}")
    for entry in result.waiting:
        click.echo(f"  waiting: {entry}")
    _print_problems(result.problems)
    if result.empty and not result.problems:
        click.echo(f"No changes: federation {result.federation} is up to date.")
    else:
        click.echo(
            f"Plan: {_count(len(result.actions), 'action')}, "
            f"{len(result.waiting)} waiting for a later pass, "
            f"{len(result.problems)} blocked."
        )


# An object waiting for its authority's certificate or CRL repeats its
# authority's problem, so past this many they are summed up in one line.
_MAX_LISTED_UNPUBLISHED = 5


def _waits_for_authority(problem: PlanProblem) -> bool:
    message = problem.message
    return message.startswith("not published: no certificate for") or (
        message.startswith("not published:")
        and message.endswith("has not signed a CRL yet")
    )


def _print_problems(problems: Sequence[PlanProblem]) -> None:
    unpublished = [p for p in problems if _waits_for_authority(p)]
    listed = problems if len(unpublished) <= _MAX_LISTED_UNPUBLISHED else None
    for problem in listed or [p for p in problems if p not in unpublished]:
        click.echo(f"  blocked: {problem}", err=True)
    if listed is None:
        targets = sorted(
            {p.object.split(":")[0].removeprefix("target ") for p in unpublished}
        )
        click.echo(
            f"  blocked: {len(unpublished)} objects on targets {', '.join(targets)} "
            "are not published until their authorities have certificates and "
            "CRLs; plan --json lists each",
            err=True,
        )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # A container may run under a numeric id with no password entry.
        return "unknown"


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


@cli.command()
@CONFIG_OPTION
def apply(config_path: Path) -> None:
    """Create keys, issue certificates and publish until the federation converges."""
    from pkifed.federation.audit import AuditLog
    from pkifed.sync.reconcile import Reconciler, utc_now

    actor = f"cli:{_user()}@{socket.gethostname()}"

    with _session(config_path, writing=True) as (config, store, runtime):
        audit = AuditLog(store)

        def progress(outcome: ActionOutcome) -> None:
            mark = {"done": "ok", "failed": "FAILED", "skipped": "skipped"}
            detail = f": {outcome.message}" if outcome.message else ""
            action = outcome.action
            click.echo(
                f"  [{mark[outcome.outcome]}] {action.kind} {action.object}{detail}"
            )
            # Every change is audited, whether the daemon or a person made it.
            audit.append(
                at=utc_now(),
                actor=actor,
                kind=str(action.kind),
                subject=action.object,
                outcome=outcome.outcome,
                reason=action.reason,
                message=outcome.message,
            )

        reconciler = Reconciler(config, store, runtime, on_progress=progress)
        results = reconciler.converge()
    applied = [r for r in results if r.outcomes]
    last = results[-1]
    if not applied and last.plan.empty and not last.plan.problems:
        click.echo(
            f"No changes: federation {last.plan.federation} is up to date "
            f"({_count(len(config.model.authorities), 'authority', 'authorities')})."
        )
        return
    for entry in last.plan.waiting:
        click.echo(f"  waiting: {entry}")
    _print_problems(last.plan.problems)
    done = sum(1 for r in applied for o in r.outcomes if o.outcome == "done")
    failed = sum(len(r.failed) for r in applied)
    passes = _count(len(applied), "pass", "passes")
    click.echo(
        f"Applied {_count(done, 'action')} in {passes}; {failed} failed or skipped, "
        f"{len(last.plan.problems)} blocked, {len(last.plan.waiting)} waiting."
    )
    if failed or last.plan.problems:
        click.echo("Run apply again after fixing the causes above.", err=True)
        sys.exit(1)
    if last.plan.waiting:
        click.echo("Run apply again to continue the waiting steps.")


@cli.command()
@click.argument("authority")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(list(REVOCATION_REASONS), case_sensitive=False),
    help="RFC 5280 reason code written into the issuer's CRL.",
)
@CONFIG_OPTION
@click.option("--yes", is_flag=True, help="Revoke without asking for confirmation.")
def revoke(authority: str, reason: str, config_path: Path, yes: bool) -> None:
    """Revoke an authority's certificate; the next apply replaces it with a new key.

    Shows what the revocation changes first. The next apply lists the serial on
    the parent's CRL, removes the certificate from every bundle and chain, and
    re-issues the authority and its descendants under a new key. A root cannot
    be revoked: rotate it instead.
    """
    from pkifed.config.loader import load_config
    from pkifed.federation import crl
    from pkifed.federation.audit import AuditLog
    from pkifed.federation.locking import exclusive_run
    from pkifed.federation.store import Store
    from pkifed.sync.reconcile import utc_now

    # Case-insensitive matching returns the name as typed, so it is mapped back
    # to the RFC's spelling.
    reason = next(name for name in crl.REASONS if name.lower() == reason.lower())
    config = load_config(config_path, check_secrets=False)
    with exclusive_run(config.state_url):
        store = Store(config.state_url)
        try:
            store.initialise()
            with store.transaction() as session:
                impact = crl.revocation_impact(config.model, store, session, authority)
                if impact.previous is not None:
                    click.echo(
                        f"authority {authority}: certificate {impact.serial} is "
                        f"already revoked ({impact.previous.reason}); run pkifed "
                        "apply to replace it"
                    )
                    return
                for line in impact.describe():
                    click.echo(f"  {line}")
                if not yes:
                    click.confirm(
                        f"Revoke certificate {impact.serial} of {authority} "
                        f"({reason})?",
                        abort=True,
                    )
                crl.record_revocation(store, session, impact, reason, utc_now())
            # A revocation changes trust as much as any action, so it is
            # audited with the person who made it.
            AuditLog(store).append(
                at=utc_now(),
                actor=f"cli:{_user()}@{socket.gethostname()}",
                kind="revoke",
                subject=f"authority {authority}",
                outcome="done",
                reason=reason,
                message=f"revoked certificate {impact.serial}",
            )
        finally:
            store.close()
    click.echo(
        f"Revoked certificate {impact.serial} of {authority} ({reason}). Run pkifed "
        "apply to publish the CRL and replace the authority."
    )


# Exit status of ``report --fail-on`` when an unwaived finding is at or above
# the threshold; 1 stays reserved for errors and 2 for plan's pending changes.
REPORT_FAILED_EXIT = 3


@cli.command()
@CONFIG_OPTION
@click.option(
    "--format",
    "output_format",
    type=click.Choice(list(REPORT_FORMATS)),
    default="table",
    show_default=True,
    help="Output format: a terminal table, JSON, CSV (one row per authority), "
    "Markdown, or one self-contained HTML file.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report to this file instead of standard output.",
)
@click.option(
    "--live",
    is_flag=True,
    help="Describe each key in its provider, list provider keys and read every "
    "published object before reporting, instead of reading the state store only.",
)
@click.option(
    "--fail-on",
    type=click.Choice(list(SEVERITIES)),
    default=None,
    help="Exit with status 3 when an unwaived finding has this severity or higher.",
)
def report(
    config_path: Path,
    output_format: str,
    output: Path | None,
    live: bool,
    fail_on: str | None,
) -> None:
    """Report the inventory and the policy's findings; --fail-on gates on them.

    Exit status: 0 when the report was written, 3 when --fail-on is set and an
    unwaived finding is at or above it, 1 on an error.
    """
    from pkifed.config.loader import load_config
    from pkifed.config.policy import Severity
    from pkifed.federation.reports import build_report
    from pkifed.federation.reports import render as render_report
    from pkifed.federation.runtime import Runtime
    from pkifed.federation.store import Store
    from pkifed.sync.reconcile import utc_now

    # Secrets are needed only to talk to providers, so a report from the state
    # store works without them.
    config = load_config(config_path, check_secrets=live)
    store = Store(_reading_url(config))
    runtime = Runtime(config) if live else None
    try:
        store.initialise()
        result = build_report(config, store, utc_now(), runtime)
    finally:
        if runtime is not None:
            runtime.close()
        store.close()
    text = render_report(result, output_format)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as error:
            message = f"cannot write the report to {output}: {error.strerror}"
            raise OutputError(message) from None
        click.echo(f"Wrote {output}")
    if fail_on is not None and result.policy.fails(Severity(fail_on)):
        failing = sum(
            1
            for finding in result.policy.unwaived
            if Severity(finding.severity).rank >= Severity(fail_on).rank
        )
        click.echo(
            f"report: {_count(failing, 'unwaived finding')} at or above {fail_on}",
            err=True,
        )
        sys.exit(REPORT_FAILED_EXIT)


@cli.group()
def providers() -> None:
    """Inspect the configured key providers."""


@providers.command("check")
@CONFIG_OPTION
def providers_check(config_path: Path) -> None:
    """Show each provider's reachability, identity, algorithms and permissions."""
    from pkifed.config.loader import load_config
    from pkifed.federation.runtime import Runtime
    from pkifed.secrets import redact

    config = load_config(config_path)
    failures = 0
    with Runtime(config) as runtime:
        for name in config.model.providers:
            try:
                status = runtime.provider(name).check()
            except PkifedError as error:
                failures += 1
                click.echo(f"{name}: unreachable: {redact(str(error))}")
                continue
            algorithms = ",".join(sorted(status.algorithms))
            levels = ",".join(sorted(status.protection_levels))
            missing = ",".join(status.missing_permissions) or "none"
            click.echo(
                f"{name}: ok; identity {status.identity}; algorithms {algorithms}; "
                f"protection {levels}; missing permissions {missing}"
                + (f"; {status.message}" if status.message else "")
            )
    if failures:
        sys.exit(1)


@cli.command()
@CONFIG_OPTION
@click.option(
    "--once",
    is_flag=True,
    help="Run one pass as leader and exit like apply: 0 when it succeeded, 1 when "
    "an action failed, something is blocked or another replica holds the lease.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address of /healthz, /readyz and /metrics; overrides daemon.listen.",
)
@click.option(
    "--replica-id",
    help="This replica's name in the lease and audit log; overrides daemon.replica_id.",
)
@click.pass_context
def daemon(
    context: click.Context,
    config_path: Path,
    once: bool,
    listen: str | None,
    replica_id: str | None,
) -> None:
    """Reconcile on the configured schedule, with health, metrics and leader election.

    SIGTERM or SIGINT stops the daemon after the running pass; SIGHUP reloads
    the federation file if it is valid and keeps the running one otherwise.
    """
    from pkifed.config.daemon import parse_listen
    from pkifed.config.loader import load_config
    from pkifed.sync.daemon import Daemon
    from pkifed.sync.logs import configure_logging

    config = load_config(config_path)
    settings = config.model.logging
    # --log-format on the command line wins over the file's logging.format.
    root = context.find_root()
    json_lines = settings.format == "json"
    if root.get_parameter_source("log_format") is ParameterSource.COMMANDLINE:
        json_lines = root.params["log_format"] == "json"
    configure_logging(
        verbose=context.obj["verbose"],
        json_lines=json_lines,
        level=logging.getLevelNamesMapping()[settings.level.upper()],
    )
    if listen is not None:
        try:
            parse_listen(listen)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--listen") from None
    runner = Daemon(config, replica_id=replica_id, listen=listen)
    if once:
        sys.exit(runner.run_once())
    runner.start()
    runner.serve_forever()


@cli.group()
def audit() -> None:
    """Check and export the audit log of every action apply and the daemon took."""


def _parse_anchor(
    context: click.Context, parameter: click.Parameter, value: str | None
) -> tuple[int, str] | None:
    if value is None:
        return None
    seq_text, separator, expected = value.partition(":")
    if (
        not separator
        or not seq_text.isdigit()
        or int(seq_text) < 1
        or re.fullmatch(r"[0-9a-f]{64}", expected) is None
    ):
        raise click.BadParameter(
            f"{value!r} is not SEQ:HASH, such as 42:<64 hex digits>, as "
            "'pkifed audit verify' prints for the head"
        )
    return int(seq_text), expected


@audit.command("verify")
@CONFIG_OPTION
@click.option(
    "--anchor",
    metavar="SEQ:HASH",
    callback=_parse_anchor,
    help=(
        "A head that an earlier verify printed, kept outside the state store; "
        "fail unless that entry is still in the log with that hash, which "
        "catches entries removed from the end."
    ),
)
def audit_verify(config_path: Path, anchor: tuple[int, str] | None) -> None:
    """Check the audit log's hash chain; exit 1 naming the first bad entry."""
    from pkifed.config.loader import load_config
    from pkifed.federation.audit import AuditLog
    from pkifed.federation.store import Store

    config = load_config(config_path, check_secrets=False)
    store = Store(_reading_url(config))
    try:
        store.initialise()
        result = AuditLog(store).verify(anchor)
    finally:
        store.close()
    if not result.ok:
        click.echo(
            f"audit log: entry {result.bad_seq} is invalid: {result.problem}; "
            f"entries 1 to {result.head_seq} are intact",
            err=True,
        )
        sys.exit(1)
    click.echo(
        f"audit log: {result.entries} entries intact; head is entry "
        f"{result.head_seq} with hash {result.head_hash}"
    )
    click.echo(
        f"anchor for the next check: --anchor {result.head_seq}:{result.head_hash}"
    )


@audit.command("export")
@CONFIG_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the JSON lines to this file instead of standard output.",
)
def audit_export(config_path: Path, output: Path | None) -> None:
    """Write every audit log entry as one JSON object per line."""
    from pkifed.config.loader import load_config
    from pkifed.federation.audit import AuditLog
    from pkifed.federation.store import Store

    config = load_config(config_path, check_secrets=False)
    store = Store(_reading_url(config))
    try:
        store.initialise()
        log = AuditLog(store)
        if output is None:
            log.export(sys.stdout)
            return
        try:
            with output.open("w", encoding="utf-8") as stream:
                count = log.export(stream)
        except OSError as error:
            message = f"cannot write the audit log to {output}: {error.strerror}"
            raise OutputError(message) from None
    finally:
        store.close()
    click.echo(f"Wrote {_count(count, 'entry', 'entries')} to {output}")


@cli.group()
def dev() -> None:
    """Run local stand-ins of AWS, Google Cloud and Azure, for trying pkifed offline."""


@dev.command("up")
@CONFIG_OPTION
def dev_up(config_path: Path) -> None:
    """Start the local services in the background and write their endpoint files.

    The services listen on 127.0.0.1 only. Their endpoints, the Key Vault's CA
    bundle and token, and the Azurite account key go to .pkifed/dev beside the
    federation file, which can refer to them as ${file:...}. Buckets and
    containers that the file's targets name are created. Does nothing when the
    services are running already.
    """
    from pkifed.sync import dev as local_services

    local_services.up(config_path, click.echo)


@dev.command("down")
@CONFIG_OPTION
def dev_down(config_path: Path) -> None:
    """Stop the local services and remove .pkifed/dev beside the federation file.

    The services keep keys and objects in memory, so they are gone afterwards,
    with everything else in .pkifed/dev.
    """
    from pkifed.sync import dev as local_services

    local_services.down(config_path, click.echo)


@dev.command("status")
@CONFIG_OPTION
def dev_status(config_path: Path) -> None:
    """Show whether the local services run and whether each one responds.

    Exit status: 0 when every service responds, 1 when one does not, 3 when
    the services are not running.
    """
    from pkifed.sync import dev as local_services

    sys.exit(local_services.status(config_path, click.echo))


@dev.command("serve", hidden=True)
@CONFIG_OPTION
def dev_serve(config_path: Path) -> None:
    """Run the local services in the foreground until SIGTERM or SIGINT."""
    from pkifed.sync import dev as local_services

    sys.exit(local_services.serve(config_path))


def main(argv: list[str] | None = None) -> None:
    """Run the command line, turning pkifed's errors into one line and exit status 1."""
    from pkifed.secrets import redact

    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="pkifed", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except ConfigError as error:
        click.echo(redact(str(error)), err=True)
        sys.exit(1)
    except PkifedError as error:
        if verbose:
            click.echo(redact(traceback.format_exc()), err=True)
        click.echo(f"pkifed: error: {redact(str(error))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as error:
        if verbose:
            click.echo(redact(traceback.format_exc()), err=True)
        click.echo(
            f"pkifed: internal error: {type(error).__name__}: {redact(str(error))}; "
            "rerun with --verbose for the traceback and report it",
            err=True,
        )
        sys.exit(70)

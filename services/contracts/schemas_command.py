"""`casestream schemas check | register`: guard schema changes and register agency subjects.

Registered in the CLI with ``main.add_command(schemas)``; only click is imported at module load
(the registry client is created when a command runs).

``check`` compares a schema (default: ``schemas/case_event.avsc``) with every version registered
under each agency subject ``agency.<agency_id>.events-value``:

* the registry's rule, BACKWARD_TRANSITIVE (the new schema reads data of every registered
  version), checked with :func:`services.contracts.registry.check_compatibility` (local rules with
  readable messages *and* the registry's own verdict);
* the stricter rule of ``schemas/README.md`` ("old consumers keep working"): consumers still on
  the latest registered version must read data written with the new schema (FORWARD).  Removing
  a required field passes the registry but fails here.  ``--backward-only`` skips this rule
  (e.g. for a new enum symbol after every consumer was upgraded).

With no agency subject registered (or ``--local``), the schema is checked against the published
versions in ``schemas/history/`` instead.  Exit status: 0 compatible, 1 a subject would break
(or the schema is invalid), 2 the registry could not be asked.

``register`` registers the contract schema for agencies' subjects at BACKWARD_TRANSITIVE
(idempotent: an agency already holding the schema keeps its id).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

#: Subject of an agency topic (TopicNameStrategy); group ``agency_id``.
AGENCY_SUBJECT_PATTERN = re.compile(r"^agency\.(?P<agency_id>[0-9]{2}-[A-Z]+)\.events-value$")
_HISTORY_FILE = re.compile(r"^case_event\.v(?P<version>[0-9]+)\.avsc$")

EXIT_OK = 0
EXIT_INCOMPATIBLE = 1
EXIT_UNAVAILABLE = 2


@dataclass
class SubjectCheck:
    """The verdict for one subject (or for ``schemas/history`` in local mode)."""

    subject: str
    versions: list[int] = field(default_factory=list)
    #: BACKWARD_TRANSITIVE problems: the registry refuses the schema.
    problems: list[str] = field(default_factory=list)
    #: FORWARD problems against the latest version: consumers still on it would break.
    consumer_problems: list[str] = field(default_factory=list)
    #: The check itself failed (registry error); counts as not ok.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.problems or self.consumer_problems or self.error)

    def describe_versions(self) -> str:
        if not self.versions:
            return "no versions"
        if len(self.versions) == 1:
            return f"version {self.versions[0]}"
        return f"versions {self.versions[0]}-{self.versions[-1]}"


# --------------------------------------------------------------------------- logic


def agency_subjects(client: Any) -> list[str]:
    """Every registered agency subject (``agency.<agency_id>.events-value``), sorted."""
    return sorted(s for s in client.get_subjects() if AGENCY_SUBJECT_PATTERN.fullmatch(s))


def _forward_problems(schema_text: str, version: int, old_text: str) -> list[str]:
    from services.contracts import compat

    return [
        f"consumers on version {version} cannot read events written with the new schema: {m}"
        for m in compat.check_forward(schema_text, old_text)
    ]


def check_subject(
    client: Any, subject: str, schema_text: str, *, backward_only: bool = False
) -> SubjectCheck:
    """Check ``schema_text`` as the next version of ``subject`` (see the module docstring)."""
    from services.contracts.registry import check_compatibility

    result = SubjectCheck(subject)
    try:
        result.versions = sorted(client.get_versions(subject))
        ok, messages = check_compatibility(client, subject, schema_text)
        if not ok:
            result.problems = messages
        if result.versions and not backward_only:
            latest = result.versions[-1]
            old_text = client.get_version(subject, latest).schema.schema_str
            result.consumer_problems = _forward_problems(schema_text, latest, old_text)
    except Exception as exc:  # noqa: BLE001 - reported per subject, the others still run
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def history_files(history_dir: Path) -> list[tuple[int, Path]]:
    """``(version, path)`` of every ``case_event.v<N>.avsc`` in ``history_dir``, oldest first."""
    found = []
    if history_dir.is_dir():
        for path in history_dir.iterdir():
            m = _HISTORY_FILE.fullmatch(path.name)
            if m:
                found.append((int(m["version"]), path))
    return sorted(found)


def check_history(
    schema_text: str, history_dir: Path, *, backward_only: bool = False
) -> SubjectCheck:
    """Check ``schema_text`` locally against the published versions in ``history_dir``."""
    from services.contracts import compat

    result = SubjectCheck(str(history_dir))
    files = history_files(history_dir)
    result.versions = [v for v, _ in files]
    if not files:
        result.error = f"no published versions (case_event.v<N>.avsc) in {history_dir}"
        return result
    for version, path in files:
        old_text = path.read_text(encoding="utf-8")
        result.problems += [
            f"version {version}: {m}" for m in compat.check_backward(schema_text, old_text)
        ]
    if not backward_only:
        version, path = files[-1]
        result.consumer_problems = _forward_problems(
            schema_text, version, path.read_text(encoding="utf-8")
        )
    return result


def schema_problem(schema_text: str) -> str | None:
    """Why ``schema_text`` is not a usable Avro schema (None when it is)."""
    from services.contracts.codec import parse_schema

    try:
        parse_schema(schema_text)
    except Exception as exc:  # noqa: BLE001 - json and fastavro raise many kinds
        return f"{type(exc).__name__}: {exc}"
    return None


def _same_schema(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


# --------------------------------------------------------------------------- output


def _echo_check(result: SubjectCheck, width: int) -> None:
    name = result.subject.ljust(width)
    if result.error:
        click.echo(f"  {name}  {click.style('ERROR', fg='red')}  {result.error}")
        return
    if result.ok:
        click.echo(f"  {name}  {click.style('ok', fg='green')}  ({result.describe_versions()})")
        return
    verdict = (
        "INCOMPATIBLE (the registry would refuse it)"
        if result.problems
        else "BREAKS OLD CONSUMERS (the registry would accept it)"
    )
    click.echo(f"  {name}  {click.style(verdict, fg='red')}  ({result.describe_versions()})")
    for message in [*result.problems, *result.consumer_problems]:
        click.echo(f"      - {message}")


def _client(registry_url: str | None) -> tuple[Any, str]:
    from services.contracts.registry import ccompat_url, make_client
    from services.settings import Settings

    url = ccompat_url(registry_url or Settings.from_env().registry_url)
    return make_client(url, timeout=10), url


# --------------------------------------------------------------------------- commands

_REGISTRY_URL_HELP = "schema registry URL (default: CASESTREAM_REGISTRY_URL)"


@click.group("schemas")
def schemas() -> None:
    """Check schema changes against the registry and register agency subjects.

    Every agency topic has its subject `agency.<agency_id>.events-value` holding the contract
    schema `schemas/case_event.avsc` at BACKWARD_TRANSITIVE compatibility.
    """


@schemas.command("check")
@click.option("--registry-url", default=None, help=_REGISTRY_URL_HELP)
@click.option(
    "--schema",
    "schema_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="schema to check (default: schemas/case_event.avsc)",
)
@click.option(
    "--agency",
    "agencies",
    multiple=True,
    metavar="AGENCY_ID",
    help="check only this agency's subject (repeatable; default: every agency subject)",
)
@click.option(
    "--local",
    is_flag=True,
    help="do not ask the registry: check against schemas/history/*.avsc only",
)
@click.option(
    "--history",
    "history_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="folder of published versions for the local check (default: schemas/history)",
)
@click.option(
    "--backward-only",
    is_flag=True,
    help="apply only the registry's BACKWARD_TRANSITIVE rule, not the stricter "
    "'consumers on the latest version keep working' rule",
)
def check(
    registry_url: str | None,
    schema_file: Path | None,
    agencies: tuple[str, ...],
    local: bool,
    history_dir: Path | None,
    backward_only: bool,
) -> None:
    """Would the schema break compatibility with what is registered?

    Checks the schema against every registered version of every agency subject (BACKWARD
    TRANSITIVE, with the registry's own verdict) and against the latest version (FORWARD:
    consumers not yet upgraded). With no agency subject registered, or with --local, checks
    against schemas/history/ instead. Exit status 1 when any subject would break, 2 when the
    registry could not be asked.
    """
    from services.contracts.registry import subject_for_agency
    from services.contracts.schema import schema_path, schemas_dir

    path = schema_file or schema_path()
    schema_text = path.read_text(encoding="utf-8")
    history = history_dir or schemas_dir() / "history"
    invalid = schema_problem(schema_text)
    if invalid:
        click.echo(f"{path}: not a valid Avro schema: {invalid}")
        sys.exit(EXIT_INCOMPATIBLE)

    subjects: list[str] = []
    client: Any = None
    url = ""
    if not local:
        client, url = _client(registry_url)
        try:
            registered = agency_subjects(client)
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, HTTP errors
            click.echo(
                f"error: cannot list the subjects of the schema registry at {url}: "
                f"{type(exc).__name__}: {exc}\n"
                f"(use --local to check against {history} without the registry)",
                err=True,
            )
            sys.exit(EXIT_UNAVAILABLE)
        if agencies:
            wanted = [subject_for_agency(a) for a in agencies]
            missing = [s for s in wanted if s not in registered]
            if missing:
                click.echo(f"not registered (nothing to check): {', '.join(missing)}")
            subjects = [s for s in wanted if s in registered]
        else:
            subjects = registered

    if subjects:
        click.echo(f"checking {path} against {len(subjects)} agency subjects at {url}")
        results = [
            check_subject(client, s, schema_text, backward_only=backward_only) for s in subjects
        ]
    else:
        if not local:
            click.echo(f"no agency subject registered at {url}: checking against {history}")
        else:
            click.echo(f"checking {path} against the published versions in {history}")
        results = [check_history(schema_text, history, backward_only=backward_only)]
        files = history_files(history)
        if files and not _same_schema(schema_text, files[-1][1].read_text(encoding="utf-8")):
            click.echo(
                f"note: {path.name} differs from the newest published version "
                f"{files[-1][1].name}; when it is released, add it as "
                f"case_event.v{files[-1][0] + 1}.avsc"
            )

    width = max(len(r.subject) for r in results)
    for result in results:
        _echo_check(result, width)
    bad = [r for r in results if not r.ok]
    errors = [r for r in bad if r.error]
    click.echo(
        f"{len(results)} checked: {len(results) - len(bad)} compatible, "
        f"{len(bad) - len(errors)} would break, {len(errors)} could not be checked"
    )
    if bad and len(bad) > len(errors):
        sys.exit(EXIT_INCOMPATIBLE)
    if errors:
        sys.exit(EXIT_UNAVAILABLE if subjects else EXIT_INCOMPATIBLE)


@schemas.command("register")
@click.argument("agencies", nargs=-1, metavar="AGENCY_ID...")
@click.option("--registry-url", default=None, help=_REGISTRY_URL_HELP)
@click.option("--all-known", is_flag=True, help="every agency valid today (reference data)")
def register(agencies: tuple[str, ...], registry_url: str | None, all_known: bool) -> None:
    """Register the contract schema for agencies' subjects (idempotent) and print the ids.

    Each subject is set to BACKWARD_TRANSITIVE before a new version is registered, so a schema
    that would break compatibility is refused. Exit status 1 when any agency failed.
    """
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from services.contracts import reference
    from services.contracts.registry import register_agency_subject, subject_for_agency
    from services.contracts.schema import schema_str

    wanted = list(dict.fromkeys(agencies))
    if all_known:
        wanted += [a for a in reference.agencies_at() if a not in wanted]
    if not wanted:
        raise click.UsageError("give AGENCY_ID... or --all-known")
    client, url = _client(registry_url)
    schema = Schema(schema_str(), "AVRO")
    width = max(len(subject_for_agency(a)) if _well_formed(a) else len(a) for a in wanted)
    counts = {"registered": 0, "unchanged": 0, "failed": 0}
    for agency_id in wanted:
        if not _well_formed(agency_id):
            click.echo(f"  {agency_id.ljust(width)}  FAILED  not an agency id (e.g. 20-POLICE)")
            counts["failed"] += 1
            continue
        subject = subject_for_agency(agency_id)
        if not reference.is_known_agency(agency_id):
            click.echo(
                f"  {subject.ljust(width)}  FAILED  unknown agency: not in the reference data"
            )
            counts["failed"] += 1
            continue
        try:
            try:
                existing = client.lookup_schema(subject, schema)
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:
                    raise
                existing = None
            schema_id = register_agency_subject(client, agency_id)
        except SchemaRegistryError as exc:
            reason = (
                "incompatible with the registered versions" if exc.http_status_code == 409 else ""
            )
            click.echo(f"  {subject.ljust(width)}  FAILED  {reason} {exc}".rstrip())
            counts["failed"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - registry unreachable
            click.echo(f"error: schema registry at {url}: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        if existing is not None:
            counts["unchanged"] += 1
            click.echo(
                f"  {subject.ljust(width)}  id {schema_id}  already registered "
                f"(version {existing.version})"
            )
        else:
            counts["registered"] += 1
            click.echo(f"  {subject.ljust(width)}  id {schema_id}  registered")
    click.echo(
        f"{len(wanted)} agencies at {url}: {counts['registered']} registered, "
        f"{counts['unchanged']} already registered, {counts['failed']} failed"
    )
    if counts["failed"]:
        sys.exit(EXIT_INCOMPATIBLE)


def _well_formed(agency_id: str) -> bool:
    from services.contracts import reference

    return bool(reference.AGENCY_ID_PATTERN.fullmatch(agency_id))

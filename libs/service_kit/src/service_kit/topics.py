"""Topics as code: each team declares the Kafka topics it owns in `services/<svc>/topics.yaml`,
and `python -m <svc> topics apply [--dry-run]` reconciles the cluster to it.

    topics:
      - name: blog-events
        partitions: 6
        replication_factor: auto      # auto = min(3, live brokers); or an integer
        config:
          min.insync.replicas: auto   # auto = 2 when the topic has 3+ replicas, else 1
          retention.ms: "604800000"

Reconciling creates missing topics, raises partition counts and sets the declared configs
(other dynamic configs of a topic are kept). It refuses, with exit code 2 and nothing applied,
what Kafka cannot do in place or would lose data or ordering silently: fewer partitions than
exist, or another replication factor for an existing topic. Planning is pure (`plan_topics`);
`read_cluster` and `apply_plan` talk to Kafka.

Kafka's AlterConfigs replaces a topic's whole set of dynamic configs (aiokafka has no
IncrementalAlterConfigs), so a config change sends the topic's current dynamic configs with the
declared values laid over them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service_kit.kafka_admin import NO_ERROR, UNKNOWN_TOPIC, wait_until_led
from service_kit.kafka_clients import client_options

AUTO: Literal["auto"] = "auto"
MIN_INSYNC = "min.insync.replicas"
MAX_AUTO_REPLICATION = 3
MAX_REPLICATION = 32
# DescribeConfigs' config_source of a value set on the topic itself.
DYNAMIC_TOPIC_CONFIG = 1
EXIT_REFUSED = 2
EXIT_KAFKA_ERROR = 1

TopicName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9._-]{1,249}$")]
ConfigValue = str | int | bool


def dead_letter_topic(source_topic: str, group: str) -> str:
    """The dead-letter topic of one consumer group: `<source>.<group>.dlq`, owned by that group."""
    return f"{source_topic}.{group}.dlq"


def retry_topic(source_topic: str, group: str) -> str:
    """Where the redrive puts one group's dead letters back: `<source>.<group>.retry`, owned by
    that group and read by it alone beside the source topic, so no other group sees them again."""
    return f"{source_topic}.{group}.retry"


class TopicSpec(BaseModel):
    """One declared topic, as written in a topics file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TopicName
    partitions: int = Field(ge=1, le=10_000)
    replication_factor: Literal["auto"] | int = AUTO
    config: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_dots(cls, name: str) -> str:
        if name in {".", ".."}:
            raise ValueError("'.' and '..' are not topic names")
        return name

    @field_validator("replication_factor", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        # One clear message instead of one per member of the union.
        if value == AUTO:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if 1 <= value <= MAX_REPLICATION:
                return value
            raise ValueError(f"must be between 1 and {MAX_REPLICATION} copies (got {value})")
        raise ValueError(f"must be 'auto' or a number of copies (got {value!r})")

    @field_validator("config", mode="before")
    @classmethod
    def _config_as_text(cls, config: Any) -> Any:
        # Kafka configs are strings; YAML gives ints and booleans for some of them.
        if not isinstance(config, Mapping):
            return config
        return {
            str(key): ("true" if value else "false") if isinstance(value, bool) else str(value)
            for key, value in config.items()
        }

    @model_validator(mode="after")
    def _auto_only_where_meaningful(self) -> TopicSpec:
        for key, value in self.config.items():
            if not key.strip():
                raise ValueError("config keys must not be empty")
            if value == AUTO and key != MIN_INSYNC:
                raise ValueError(f"config {key}: 'auto' is only meaningful for {MIN_INSYNC}")
        return self


class TopicsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: list[TopicSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> TopicsFile:
        names = [topic.name for topic in self.topics]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"topics declared twice: {', '.join(doubled)}")
        return self


class TopicsFileError(Exception):
    """A topics file that cannot be read or does not validate; the message says where and why."""


def load_topics_file(path: Path) -> TopicsFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopicsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TopicsFileError(f"{path}: not valid YAML: {exc}") from None
    try:
        return TopicsFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<file>'}: {error['msg']}"
            for error in exc.errors()
        )
        raise TopicsFileError(f"{path}: {problems}") from None


# -- planning (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicState:
    """A topic as it exists in the cluster (or, resolved, as it should exist)."""

    name: str
    partitions: int
    replication_factor: int
    # The effective value of every config the declaration names (absent: Kafka has no such key).
    config: Mapping[str, str] = field(default_factory=dict)


def auto_replication_factor(brokers: int) -> int:
    return max(1, min(MAX_AUTO_REPLICATION, brokers))


def auto_min_insync_replicas(replication_factor: int) -> int:
    """2 of 3+ copies must have a write before acks=all succeeds; with fewer copies, 1."""
    return 2 if replication_factor >= 3 else 1


def resolve(spec: TopicSpec, brokers: int, current: TopicState | None) -> TopicState:
    """The declared topic with `auto` turned into numbers for this cluster.

    An existing topic keeps its replication factor under `auto` when it already has at least
    what `auto` would give now: a broker that is down for a while must not make the plan ask
    for fewer copies (which would be refused)."""
    if isinstance(spec.replication_factor, int):
        replication = spec.replication_factor
    else:
        replication = auto_replication_factor(brokers)
        if current is not None and current.replication_factor >= replication:
            replication = current.replication_factor
    config = {
        key: str(auto_min_insync_replicas(replication)) if value == AUTO else value
        for key, value in spec.config.items()
    }
    return TopicState(spec.name, spec.partitions, replication, config)


@dataclass(frozen=True)
class CreateTopic:
    topic: TopicState

    def describe(self) -> str:
        configs = ", ".join(f"{k}={v}" for k, v in sorted(self.topic.config.items()))
        return (
            f"create      {self.topic.name}: {self.topic.partitions} partitions, "
            f"replication factor {self.topic.replication_factor}"
            + (f", {configs}" if configs else "")
        )


@dataclass(frozen=True)
class AddPartitions:
    name: str
    current: int
    wanted: int

    def describe(self) -> str:
        return (
            f"partitions  {self.name}: {self.current} -> {self.wanted} (keys hashed to new "
            "partitions from now on; consumers pick them up at their next metadata refresh)"
        )


@dataclass(frozen=True)
class AlterConfigs:
    name: str
    # key -> (current effective value or None, wanted value)
    changes: Mapping[str, tuple[str | None, str]]

    def describe(self) -> str:
        changed = ", ".join(
            f"{key}: {'(unset)' if old is None else old} -> {new}"
            for key, (old, new) in sorted(self.changes.items())
        )
        return f"config      {self.name}: {changed}"


@dataclass(frozen=True)
class Refusal:
    name: str
    reason: str

    def describe(self) -> str:
        return f"REFUSED     {self.name}: {self.reason}"


@dataclass(frozen=True)
class Unchanged:
    topic: TopicState

    def describe(self) -> str:
        return (
            f"up to date  {self.topic.name}: {self.topic.partitions} partitions, "
            f"replication factor {self.topic.replication_factor}"
        )


Change = CreateTopic | AddPartitions | AlterConfigs


@dataclass(frozen=True)
class Plan:
    brokers: int
    changes: tuple[Change, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    unchanged: tuple[Unchanged, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to change and nothing refused: the cluster matches the declaration."""
        return not self.changes and not self.refusals

    def lines(self) -> list[str]:
        return [item.describe() for item in (*self.refusals, *self.changes, *self.unchanged)]


def plan_topics(
    specs: Sequence[TopicSpec], current: Mapping[str, TopicState], brokers: int
) -> Plan:
    """What to do so that the cluster (`current`: the declared topics that exist, `brokers`
    live) matches `specs`."""
    changes: list[Change] = []
    refusals: list[Refusal] = []
    unchanged: list[Unchanged] = []
    for spec in specs:
        existing = current.get(spec.name)
        wanted = resolve(spec, brokers, existing)
        min_insync = wanted.config.get(MIN_INSYNC)
        if (
            min_insync is not None
            and min_insync.isdigit()
            and int(min_insync) > wanted.replication_factor
        ):
            refusals.append(
                Refusal(
                    spec.name,
                    f"{MIN_INSYNC}={min_insync} is more than the replication factor "
                    f"{wanted.replication_factor}: every acks=all write would fail",
                )
            )
            continue
        if existing is None:
            if wanted.replication_factor > brokers:
                refusals.append(
                    Refusal(
                        spec.name,
                        f"replication factor {wanted.replication_factor} needs "
                        f"{wanted.replication_factor} brokers, {brokers} live",
                    )
                )
            else:
                changes.append(CreateTopic(wanted))
            continue
        refused = False
        if wanted.partitions < existing.partitions:
            refusals.append(
                Refusal(
                    spec.name,
                    f"declares {wanted.partitions} partitions but has {existing.partitions}: "
                    "Kafka cannot remove partitions (recreating the topic loses its data and "
                    "every consumer group's offsets); declare "
                    f"{existing.partitions} or more",
                )
            )
            refused = True
        if wanted.replication_factor != existing.replication_factor:
            refusals.append(
                Refusal(
                    spec.name,
                    f"declares replication factor {wanted.replication_factor} but has "
                    f"{existing.replication_factor}: changing it means reassigning every "
                    "partition's replicas (kafka-reassign-partitions), which this tool does not "
                    "do; declare "
                    f"{existing.replication_factor} or reassign first",
                )
            )
            refused = True
        if refused:
            continue
        topic_changes: list[Change] = []
        if wanted.partitions > existing.partitions:
            topic_changes.append(AddPartitions(spec.name, existing.partitions, wanted.partitions))
        config_changes = {
            key: (existing.config.get(key), value)
            for key, value in wanted.config.items()
            if _normalised(existing.config.get(key)) != _normalised(value)
        }
        if config_changes:
            topic_changes.append(AlterConfigs(spec.name, config_changes))
        if topic_changes:
            changes.extend(topic_changes)
        else:
            unchanged.append(Unchanged(wanted))
    return Plan(brokers, tuple(changes), tuple(refusals), tuple(unchanged))


def _normalised(value: str | None) -> str | None:
    # List-valued configs ("compact,delete") compare without the spaces around commas.
    if value is None:
        return None
    return ",".join(part.strip() for part in value.split(","))


# -- Kafka -------------------------------------------------------------------------------------


class TopicsRefused(Exception):
    """The plan has refusals; nothing was applied."""

    def __init__(self, plan: Plan) -> None:
        super().__init__("; ".join(refusal.describe() for refusal in plan.refusals))
        self.plan = plan


async def read_cluster(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]
) -> tuple[int, dict[str, TopicState]]:
    """(live brokers, the declared topics that exist, with the effective value of each
    declared config)."""
    cluster = await admin.describe_cluster()
    brokers = len(cluster["brokers"])
    names = [spec.name for spec in specs]
    described = await admin.describe_topics(names)
    existing: dict[str, tuple[int, int]] = {}
    for entry in described:
        if entry["error_code"] == UNKNOWN_TOPIC:
            continue
        if entry["error_code"] != NO_ERROR:
            raise for_code(entry["error_code"])(f"cannot describe topic {entry['topic']}")
        partitions = entry["partitions"]
        replication = max((len(p["replicas"]) for p in partitions), default=0)
        existing[entry["topic"]] = (len(partitions), replication)
    configs = await describe_topic_configs(admin, list(existing))
    declared = {spec.name: spec for spec in specs}
    current = {
        name: TopicState(
            name,
            partitions,
            replication,
            {
                key: configs[name][key][0]
                for key in declared[name].config
                if key in configs.get(name, {})
            },
        )
        for name, (partitions, replication) in existing.items()
    }
    return brokers, current


async def describe_topic_configs(
    admin: AIOKafkaAdminClient, names: Sequence[str]
) -> dict[str, dict[str, tuple[str, int]]]:
    """topic -> config key -> (effective value, config source) for every config of the topics."""
    if not names:
        return {}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    )
    found: dict[str, dict[str, tuple[str, int]]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != NO_ERROR:
                raise for_code(resource["error_code"])(
                    f"cannot describe the configs of {resource['resource_name']}: "
                    f"{resource['error_message']}"
                )
            found[resource["resource_name"]] = {
                entry["config_names"]: (entry["config_value"], entry.get("config_source", -1))
                for entry in resource["config_entries"]
                if entry["config_value"] is not None
            }
    return found


async def apply_plan(
    admin: AIOKafkaAdminClient, plan: Plan, *, ready_timeout_s: float = 60.0
) -> None:
    """Carry out the plan's changes (never with refusals), then wait until every partition of the
    created or grown topics has a leader."""
    if plan.refusals:
        raise TopicsRefused(plan)
    creates = [change.topic for change in plan.changes if isinstance(change, CreateTopic)]
    if creates:
        response = await admin.create_topics(
            [
                NewTopic(
                    topic.name,
                    num_partitions=topic.partitions,
                    replication_factor=topic.replication_factor,
                    topic_configs=dict(topic.config),
                )
                for topic in creates
            ]
        )
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code != NO_ERROR:
                message = topic_error[2] if len(topic_error) > 2 else ""
                raise for_code(code)(f"cannot create topic {name}: {message}")
    grown = {
        change.name: NewPartitions(total_count=change.wanted)
        for change in plan.changes
        if isinstance(change, AddPartitions)
    }
    if grown:
        await admin.create_partitions(grown)
    alters = [change for change in plan.changes if isinstance(change, AlterConfigs)]
    if alters:
        await _alter_configs(admin, alters)
    touched = {topic.name: topic.partitions for topic in creates} | {
        name: new.total_count for name, new in grown.items()
    }
    if touched:
        await wait_until_led(admin, touched, ready_timeout_s)


async def _alter_configs(admin: AIOKafkaAdminClient, alters: Sequence[AlterConfigs]) -> None:
    # AlterConfigs replaces the topic's whole dynamic config: send what is set on the topic now
    # with the declared values over it, so configs set by other means survive.
    current = await describe_topic_configs(admin, [alter.name for alter in alters])
    resources = []
    for alter in alters:
        dynamic = {
            key: value
            for key, (value, source) in current.get(alter.name, {}).items()
            if source == DYNAMIC_TOPIC_CONFIG
        }
        wanted = {key: new for key, (_old, new) in alter.changes.items()}
        resources.append(ConfigResource(ConfigResourceType.TOPIC, alter.name, dynamic | wanted))
    for response in await admin.alter_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != NO_ERROR:
                raise for_code(resource["error_code"])(
                    f"cannot alter the configs of {resource['resource_name']}: "
                    f"{resource['error_message']}"
                )


async def reconcile(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    *,
    dry_run: bool = False,
    request_timeout_ms: int = 15_000,
) -> Plan:
    """Plan against the cluster at `bootstrap` and, unless `dry_run`, apply. Raises
    TopicsRefused (nothing applied) when the plan has refusals."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=request_timeout_ms,
        client_id="topics-apply",
        **client_options(),
    )
    await admin.start()
    try:
        brokers, current = await read_cluster(admin, specs)
        plan = plan_topics(specs, current, brokers)
        if plan.refusals:
            raise TopicsRefused(plan)
        if not dry_run:
            await apply_plan(admin, plan)
        return plan
    finally:
        await admin.close()


# -- the `topics` command of each service -----------------------------------------------------


def default_topics_file(package_file: str) -> Path:
    """A service's topics file: shipped inside its package (wheel) or, from a checkout, at
    `services/<svc>/topics.yaml` (the package lives in `services/<svc>/src/<svc>/`)."""
    package_dir = Path(package_file).resolve().parent
    for candidate in (package_dir / "topics.yaml", package_dir.parents[1] / "topics.yaml"):
        if candidate.is_file():
            return candidate
    return package_dir.parents[1] / "topics.yaml"


def topics_command(
    argv: Sequence[str],
    *,
    service: str,
    default_file: Path,
    env_prefix: str,
    prog: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """`python -m <service> topics apply [--dry-run] [--file F] [--bootstrap B]`; returns the exit
    code: 0 done (or nothing to do), 2 refused or invalid file, 1 Kafka error."""
    parser = argparse.ArgumentParser(
        prog=prog or f"python -m {service} topics",
        description=f"Reconcile the Kafka topics the {service} team owns with its topics file.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    apply = commands.add_parser("apply", help="create / grow / configure the declared topics")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    apply.add_argument("--file", type=Path, default=default_file, help=f"default: {default_file}")
    apply.add_argument(
        "--bootstrap",
        default=os.environ.get(f"{env_prefix}KAFKA_BOOTSTRAP_SERVERS")
        or os.environ.get("BLOG_KAFKA_BOOTSTRAP")
        or "127.0.0.1:9092",
        help=f"comma-separated brokers (default: ${env_prefix}KAFKA_BOOTSTRAP_SERVERS, "
        "then $BLOG_KAFKA_BOOTSTRAP)",
    )
    args = parser.parse_args(list(argv))
    try:
        declared = load_topics_file(args.file)
    except TopicsFileError as exc:
        print(f"{service} topics: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        plan = asyncio.run(reconcile(args.bootstrap, declared.topics, dry_run=args.dry_run))
    except TopicsRefused as refused:
        out(_heading(args, refused.plan))
        for line in refused.plan.lines():
            out(f"  {line}")
        print(
            f"{service} topics: nothing applied: {len(refused.plan.refusals)} change(s) refused "
            f"(edit {args.file} or change the cluster by hand)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    except (KafkaError, OSError, TimeoutError) as exc:
        print(f"{service} topics: Kafka at {args.bootstrap}: {exc!r}", file=sys.stderr)
        return EXIT_KAFKA_ERROR
    out(_heading(args, plan))
    for line in plan.lines():
        out(f"  {line}")
    if plan.empty:
        out("nothing to do")
    elif args.dry_run:
        out(f"dry run: {len(plan.changes)} change(s) planned, nothing applied")
    else:
        out(f"applied {len(plan.changes)} change(s)")
    return 0


def _heading(args: argparse.Namespace, plan: Plan) -> str:
    return f"{args.file} against {args.bootstrap} ({plan.brokers} live broker(s)):"


def topic_specs(
    names: Iterable[str], partitions: int, config: Mapping[str, str] | None = None
) -> list[TopicSpec]:
    """Specs with `auto` replication and min.insync.replicas (the shape every team file uses),
    for code that creates topics on the fly (test fixtures, benchmarks)."""
    return [
        TopicSpec(
            name=name,
            partitions=partitions,
            replication_factor=AUTO,
            config={MIN_INSYNC: AUTO, **(config or {})},
        )
        for name in names
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m service_kit.topics apply --file F [--dry-run]`: any topics file, for operators
    and tests; each service's own `topics` command applies its team's file."""
    return topics_command(
        sys.argv[1:] if argv is None else argv,
        service="topics",
        default_file=Path("topics.yaml"),
        env_prefix="BLOG_",
        prog="python -m service_kit.topics",
    )


if __name__ == "__main__":
    sys.exit(main())

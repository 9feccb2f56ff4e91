"""`make bench`: the gateway against its baselines and ceilings on the real local stack.

    python -m bench [--seconds 10] [--concurrency 1,8,32] [--messages 2000] [--latency-ms 100]
                    [--transport-sends 200] [--round-trip-ms 20] [--host-threads N]
                    [--model-messages 1000] [--large-messages 24]
                    [--storage-calls 1000] [--expire-rows 100000]
                    [--expire-status-rows 10000]
                    [--scenarios accept,delivery,transport,host,model,large,hostile,storage,expire,
                                 guards]
                    [--profile DIR] [--no-write]

Starts Azurite (in memory) and the SendGrid stand-in on loopback, runs each scenario with its
baseline in the same run, prints one markdown table and writes it, with the machine and the
command, between the result markers of docs/performance.md (only when every scenario ran and
nothing was profiled). Exits 0 when the bench ran, whatever the table says; 1 if it failed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from bench.accept import AcceptLevel, run_accept
from bench.delivery import ConsumerBaseline, DrainResult, run_drain, run_minimal_consumer
from bench.expire import (
    ExpireResult,
    StatusExpireResult,
    run_expire,
    run_expire_bodies,
    run_expire_statuses,
)
from bench.guards import GuardCost, run_guards
from bench.host_overhead import NoopResult, noop_settings, run_noop
from bench.hostile import HostileResult, HostileRun, run_hostile
from bench.large import INSTANCE_WORKER_MIB, LargeResult, run_large
from bench.load import LoadResult
from bench.model import ASYNC, GATEWAY, SDK, ModelComparison, run_model
from bench.profiling import Profiler
from bench.report import Row, Target, machine_lines, missed, render_table, write_results
from bench.stack import ACCEPT_APP, FUNCTION_KEY, NOOP_APP, REPO, gateway_settings
from bench.stats import ratio
from bench.storage import STALL_SECONDS
from bench.storage_calls import (
    CALLS,
    INSERT_NO_ECHO,
    REPLAY,
    REQUESTS,
    WRITE_SHAPES,
    StorageCallsResult,
    run_storage_calls,
)
from bench.storage_calls import GATEWAY as CALLS_GATEWAY
from bench.transport import TransportComparison, run_transport
from devstack.azurite import Azurite
from devstack.host import read_host_json
from devstack.host_invoke import default_thread_count
from devstack.sendgrid_standin import SendGridStandIn

SCENARIOS = (
    "accept",
    "delivery",
    "transport",
    "host",
    "model",
    "large",
    "hostile",
    "storage",
    "expire",
    "guards",
)
# What infra/ and local.settings.example.json set; unset, the Functions host gives the worker 1000.
DEPLOYED_THREAD_COUNT = 32
DOC = REPO / "docs" / "performance.md"
MIB = 2**20
MS = 1e3
US = 1e6

ACCEPT_THROUGHPUT = Target(">=", 0.8)
ACCEPT_P99 = Target("<=", 2.0)
DRAIN = Target(">=", 0.8)
CPU_PER_MESSAGE = Target("<=", 1.5)
TRANSPORT = Target(">=", 4.0)
MEMORY_FLAT = Target("<=", 1.05)
# `async def` is favoured only if it costs less CPU per message and keeps up with `def`.
MODEL_KEEPS_UP = 0.95
# The worker's peak with many large deliveries must fit what the instance leaves it.
LARGE_FITS = Target("<=", 1.0)
# Issue 13: the worst 30 MB body is refused within this much of the host's CPU and memory.
HOSTILE_CPU_SECONDS = 1.0
HOSTILE_ADDED_MIB = 200
WITHIN_BUDGET = Target("<=", 1.0)
# Issue 14: the gateway's storage transport must cost less CPU per call than azure-core's own.
STORAGE_CALL = Target("<=", 1.0)
# Issue 15: one expiry run deletes every old row (at most MAX_ROWS_PER_RUN) and keeps the rest.
EVERY_ROW = Target(">=", 1.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def levels(text: str) -> list[int]:
        values = [int(v) for v in text.split(",") if v.strip()]
        if not values or min(values) < 1 or max(values) > 256:
            raise argparse.ArgumentTypeError("give concurrencies between 1 and 256, e.g. 1,8,32")
        return values

    def scenarios(text: str) -> list[str]:
        chosen = [s.strip() for s in text.split(",") if s.strip()]
        unknown = set(chosen) - set(SCENARIOS)
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {','.join(SCENARIOS)}")
        return chosen

    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per load run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured start of each run")
    parser.add_argument("--concurrency", type=levels, default=[1, 8, 32])
    parser.add_argument("--messages", type=int, default=2000, help="messages to drain")
    parser.add_argument("--latency-ms", type=int, default=100, help="stand-in latency L")
    parser.add_argument("--drain-timeout", type=float, default=240.0)
    parser.add_argument("--baseline-messages", type=int, default=500, help="minimal consumer")
    parser.add_argument("--transport-sends", type=int, default=200)
    parser.add_argument("--round-trip-ms", type=float, default=20.0, help="the proxy's delay")
    parser.add_argument(
        "--model-messages", type=int, default=1000, help="messages per execution-model variant"
    )
    parser.add_argument(
        "--large-messages", type=int, default=24, help="29 MB messages to drain, twice"
    )
    parser.add_argument(
        "--host-threads",
        type=int,
        default=DEPLOYED_THREAD_COUNT,
        help=(
            "PYTHON_THREADPOOL_THREAD_COUNT for the hosts (default: 32, as infra/ deploys it; "
            "0 leaves it unset, the worker's default)"
        ),
    )
    parser.add_argument(
        "--storage-calls", type=int, default=1000, help="storage calls per kind and transport"
    )
    parser.add_argument(
        "--expire-rows", type=int, default=100_000, help="old activity rows one expiry deletes"
    )
    parser.add_argument(
        "--expire-status-rows",
        type=int,
        # 100,000 took Azurite over 27 minutes to set up (docs/performance.md, issue 15).
        default=10_000,
        help="rows of old messages (status, delivery, events) one status expiry deletes",
    )
    parser.add_argument("--scenarios", type=scenarios, default=list(SCENARIOS))
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the host into DIR")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    parser.add_argument("--output", type=Path, default=DOC, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@dataclass
class Results:
    """Everything one run measured."""

    accept: list[AcceptLevel] = field(default_factory=list)
    drain: DrainResult | None = None
    consumer: ConsumerBaseline | None = None
    transport: list[TransportComparison] = field(default_factory=list)
    noop: NoopResult | None = None
    model: ModelComparison | None = None
    large: LargeResult | None = None
    hostile: HostileResult | None = None
    storage: StorageCallsResult | None = None
    expire: ExpireResult | None = None
    guards: list[GuardCost] = field(default_factory=list)
    expire_statuses: StatusExpireResult | None = None


def run(args: argparse.Namespace, workdir: Path, profiler: Profiler | None) -> Results:
    """Start the shared stack and run the chosen scenarios in order."""
    results = Results()
    with (
        Azurite(in_memory=True) as azurite,
        # Only the .json records: building each readable .eml cost the stand-in ~3 ms of CPU
        # per mail, on the same two cores as the gateway.
        SendGridStandIn(outbox=workdir / "outbox", write_eml=False) as standin,
    ):
        if "accept" in args.scenarios:
            _step("accept path")
            results.accept = run_accept(
                azurite=azurite,
                settings=gateway_settings(
                    azurite,
                    standin,
                    queue="bench-accept",
                    table="benchaccept",
                    host_threads=args.host_threads,
                ),
                levels=args.concurrency,
                seconds=args.seconds,
                warmup=args.warmup,
                log_dir=workdir,
                profiler=profiler,
            )
        if "delivery" in args.scenarios:
            _step(f"delivery path: {args.messages} messages, L = {args.latency_ms} ms")
            results.drain = run_drain(
                settings=gateway_settings(
                    azurite,
                    standin,
                    queue="bench-drain",
                    table="benchdrain",
                    host_threads=args.host_threads,
                ),
                standin=standin,
                azurite=azurite,
                messages=args.messages,
                latency_ms=args.latency_ms,
                timeout=args.drain_timeout,
                log_dir=workdir,
                profiler=profiler,
            )
            _step("delivery baseline: minimal consumer")
            results.consumer = run_minimal_consumer(
                azurite=azurite,
                standin=standin,
                messages=args.baseline_messages,
            )
        if "host" in args.scenarios:
            _step("host overhead: no-op app")
            settings = noop_settings(azurite.connection_string, FUNCTION_KEY)
            if args.host_threads:
                settings["PYTHON_THREADPOOL_THREAD_COUNT"] = str(args.host_threads)
            results.noop = run_noop(
                azurite=azurite,
                settings=settings,
                messages=args.messages,
                levels=args.concurrency,
                seconds=args.seconds,
                warmup=args.warmup,
                timeout=args.drain_timeout,
                log_dir=workdir,
            )
        if "model" in args.scenarios:
            _step(
                f"execution model: def vs async def, {args.model_messages} messages per variant, "
                f"L = {args.latency_ms} ms"
            )
            results.model = run_model(
                azurite=azurite,
                standin=standin,
                messages=args.model_messages,
                latency_ms=args.latency_ms,
            )
        if "large" in args.scenarios:
            _step(f"large messages: {args.large_messages} of 29 MB, bounded and unbounded")
            results.large = run_large(
                settings=gateway_settings(
                    azurite,
                    standin,
                    queue="bench-large",
                    table="benchlarge",
                    host_threads=args.host_threads,
                ),
                azurite=azurite,
                standin=standin,
                messages=args.large_messages,
                timeout=args.drain_timeout,
                log_dir=workdir,
            )
        if "hostile" in args.scenarios:
            _step("hostile bodies: the worst 30 MB requests, each on a fresh host")
            results.hostile = run_hostile(
                settings=gateway_settings(
                    azurite,
                    standin,
                    queue="bench-hostile",
                    table="benchhostile",
                    host_threads=args.host_threads,
                ),
                log_dir=workdir,
            )
        if "storage" in args.scenarios:
            _step(f"storage calls: {args.storage_calls} per kind on each transport")
            results.storage = run_storage_calls(azurite, args.storage_calls)
        if "expire" in args.scenarios:
            _step(f"expiry: {args.expire_rows:,} activity rows older than the cutoff")
            results.expire = run_expire(azurite, args.expire_rows)
            _step("expiry: leftover claim-check bodies past their retention")
            results.expire = replace(results.expire, bodies=run_expire_bodies(azurite))
            _step(f"expiry: {args.expire_status_rows:,} rows of messages older than the cutoff")
            results.expire_statuses = run_expire_statuses(azurite, args.expire_status_rows)
        if "guards" in args.scenarios:
            _step("provider guards: a closed breaker's and a brake's storage calls per mail")
            results.guards = run_guards(azurite)
    if "transport" in args.scenarios:
        _step("transport: gateway client vs official client over TLS")
        round_trips = [0.0] + ([args.round_trip_ms] if args.round_trip_ms > 0 else [])
        results.transport = run_transport(
            workdir, sends=args.transport_sends, round_trips_ms=round_trips
        )
    return results


def _step(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _ms_triple(result: LoadResult) -> str:
    s = result.summary
    return f"{s.p50 * MS:.1f} / {s.p95 * MS:.1f} / {s.p99 * MS:.1f}"


def _us(value: float | None) -> float | None:
    return None if value is None else value * US


def accept_rows(levels: Sequence[AcceptLevel]) -> list[Row]:
    """Throughput and latency of the gateway and the SDK baseline at each concurrency."""
    rows = []
    for level in levels:
        c, gateway, baseline = level.concurrency, level.gateway, level.baseline
        rows.append(
            Row(
                "1 accept",
                f"requests/s, concurrency {c}",
                gateway.throughput,
                baseline.throughput,
                ratio(gateway.throughput, baseline.throughput),
                ACCEPT_THROUGHPUT,
            )
        )
        rows.append(
            Row(
                "1 accept",
                f"latency ms p50 / p95 / p99, concurrency {c} (ratio: p99)",
                _ms_triple(gateway),
                _ms_triple(baseline),
                ratio(gateway.summary.p99, baseline.summary.p99),
                ACCEPT_P99,
            )
        )
    return rows


def delivery_rows(drain: DrainResult) -> list[Row]:
    """Drain rate against C ÷ L, and the host's memory over the drain."""
    rows = [
        Row(
            "2 delivery",
            f"drain msg/s, {drain.messages:,} queued, L = {drain.latency_ms} ms "
            f"(baseline: ceiling C ÷ L, C = {drain.in_flight})",
            drain.rate,
            drain.ceiling,
            ratio(drain.rate, drain.ceiling),
            DRAIN,
        ),
        Row(
            "2 delivery",
            "seconds from host ready to the last send (ceiling: N ÷ (C ÷ L))",
            drain.ready_to_done_seconds,
            drain.messages / drain.ceiling,
        ),
    ]
    checkpoints = sorted(drain.rss_at)
    if checkpoints:
        rows.append(
            Row(
                "2 delivery",
                "host RSS MiB after " + " / ".join(f"{n:,}" for n in checkpoints) + " sent",
                " / ".join(f"{drain.rss_at[n] / MIB:.0f}" for n in checkpoints),
            )
        )
        first, last = checkpoints[0], checkpoints[-1]
        if last > first:
            rows.append(
                Row(
                    "2 delivery",
                    f"memory flat: RSS MiB after {last:,} (gateway) vs after {first:,} "
                    "(baseline) sent",
                    drain.rss_at[last] / MIB,
                    drain.rss_at[first] / MIB,
                    ratio(drain.rss_at[last], drain.rss_at[first]),
                    MEMORY_FLAT,
                )
            )
    return rows


def transport_rows(comparisons: Sequence[TransportComparison]) -> list[Row]:
    """Sends/s and CPU per send of both clients, direct and through the delaying proxy."""
    rows = []
    # "More at the 20 ms round trip" than with no delay, from TLS handshakes alone: the issue's
    # 4-5 x was measured that way. The official client's other cost with no delay, loading the
    # CA bundle per connection, does not grow with the round trip, so the ratio including it
    # cannot be exceeded through the proxy (see docs/performance.md).
    handshake_ratio: float | None = None
    for comparison in comparisons:
        gateway, official = comparison.gateway, comparison.official
        throughput_ratio = ratio(gateway.per_second, official.per_second)
        if comparison.round_trip_ms <= 0:
            path = "direct"
            target: Target | str = TRANSPORT
            if comparison.official_ca_only is not None:
                handshake_ratio = ratio(gateway.per_second, comparison.official_ca_only.per_second)
        else:
            path = f"+{comparison.round_trip_ms:g} ms round trip"
            target = Target(">=", handshake_ratio) if handshake_ratio is not None else TRANSPORT
        rows.append(
            Row(
                "3 transport",
                f"sends/s, one worker, {path} (baseline: official client)",
                gateway.per_second,
                official.per_second,
                throughput_ratio,
                target,
            )
        )
        rows.append(
            Row(
                "3 transport",
                f"CPU ms per send, {path}",
                gateway.cpu_per_send * MS,
                official.cpu_per_send * MS,
                ratio(gateway.cpu_per_send, official.cpu_per_send),
            )
        )
        if comparison.official_ca_only is not None:
            only = comparison.official_ca_only
            rows.append(
                Row(
                    "3 transport",
                    f"sends/s, {path}, official client trusting only the bench CA "
                    "(TLS handshakes without loading a CA bundle)",
                    gateway.per_second,
                    only.per_second,
                    ratio(gateway.per_second, only.per_second),
                )
            )
    return rows


def storage_rows(storage: StorageCallsResult) -> list[Row]:
    """CPU per storage call on the gateway's transport against azure-core's default, and the
    SDK's pipeline alone (no network) as the floor."""
    rows = []
    for call in CALLS:
        gateway = storage.cost(call, CALLS_GATEWAY)
        default = storage.cost(call, REQUESTS)
        floor = storage.cost(call, REPLAY)
        if gateway is None or default is None or floor is None:
            continue
        rows.append(
            Row(
                "9 storage calls",
                f"CPU µs per call, {call} (baseline: azure-core's RequestsTransport)",
                gateway.cpu_per_call * US,
                default.cpu_per_call * US,
                ratio(gateway.cpu_per_call, default.cpu_per_call),
                STORAGE_CALL,
            )
        )
        rows.append(
            Row(
                "9 storage calls",
                f"CPU µs per call, {call}, the SDK's pipeline alone: no network "
                "(the transport's own cost is the difference)",
                floor.cpu_per_call * US,
            )
        )
    for measured, replaced in WRITE_SHAPES:
        shape, before = storage.shape(measured), storage.shape(replaced)
        if shape is None or before is None:
            continue
        rows.append(
            Row(
                "9 storage calls",
                f"CPU µs per {'insert' if measured == INSERT_NO_ECHO else 'outcome'}, {measured} "
                f"(baseline: {replaced})",
                shape.cpu_per_call * US,
                before.cpu_per_call * US,
                ratio(shape.cpu_per_call, before.cpu_per_call),
                STORAGE_CALL,
            )
        )
    return rows


def status_expire_rows(expire: StatusExpireResult) -> list[Row]:
    """One status expiry run: rows deleted and kept, time, CPU and storage calls per deleted
    row."""
    scenario = "10 expire"
    rows = [
        Row(
            scenario,
            f"status, delivery and event rows deleted, of {expire.rows:,} of "
            f"{expire.messages:,} messages older than the cutoff (baseline: all of them)",
            expire.deleted,
            expire.rows,
            ratio(expire.deleted, expire.rows),
            EVERY_ROW,
        ),
        Row(
            scenario,
            f"rows kept, of {expire.to_keep:,} of newer messages and uuid4 ids in range "
            "(baseline: all of them)",
            expire.kept,
            expire.to_keep,
            ratio(expire.kept, expire.left) if expire.kept == expire.to_keep else 0.0,
            EVERY_ROW,
        ),
        Row(scenario, "uuid4 rows in range read and skipped", expire.skipped),
    ]
    return rows + _cost_rows(scenario, expire, "status run", "status row")


def _cost_rows(
    scenario: str, expire: ExpireResult | StatusExpireResult, run: str, row: str
) -> list[Row]:
    """What an expiry run cost: its time, and rate, calls and CPU per deleted `row`."""
    rows = [
        Row(scenario, f"seconds for the {run}", expire.seconds),
        Row(scenario, f"{row}s deleted/s", expire.rows_per_second),
        Row(scenario, f"storage calls per deleted {row}", expire.calls_per_row),
        Row(scenario, f"CPU µs per deleted {row}, bench process", _us(expire.cpu_per_row)),
    ]
    if expire.azurite_cpu_seconds is not None and expire.deleted:
        rows.append(
            Row(
                scenario,
                f"CPU µs per deleted {row}, Azurite",
                expire.azurite_cpu_seconds / expire.deleted * US,
            )
        )
    return rows


def expire_rows(expire: ExpireResult) -> list[Row]:
    """One expiry run: rows deleted and kept, time, CPU and storage calls per deleted row."""
    scenario = "10 expire"
    rows = [
        Row(
            scenario,
            f"activity rows deleted, of {expire.rows:,} older than the cutoff "
            "(baseline: all of them)",
            expire.deleted,
            expire.rows,
            ratio(expire.deleted, expire.rows),
            EVERY_ROW,
        ),
        Row(
            scenario,
            f"rows kept, of {expire.newer:,} newer activity rows, a status record and an "
            "idempotency row (baseline: all of them)",
            expire.kept,
            expire.newer + 2,
            # Kept, and nothing else left: a row not deleted counts against it.
            ratio(expire.kept, expire.left) if expire.kept == expire.newer + 2 else 0.0,
            EVERY_ROW,
        ),
    ]
    rows += _cost_rows(scenario, expire, "run", "row")
    bodies = expire.bodies
    if bodies is not None:
        rows += [
            Row(
                scenario,
                f"leftover live bodies deleted, of {bodies.blobs:,} (baseline: all of them)",
                bodies.deleted,
                bodies.blobs,
                ratio(bodies.deleted, bodies.blobs),
                EVERY_ROW,
            ),
            Row(
                scenario,
                f"dead letters' and older root bodies kept, of {bodies.kept:,} (baseline: all)",
                bodies.left_kept,
                bodies.kept,
                ratio(bodies.left_kept, bodies.left) if bodies.left_kept == bodies.kept else 0.0,
                EVERY_ROW,
            ),
            Row(scenario, "ms per deleted body (list + delete)", bodies.ms_per_blob),
            Row(scenario, "CPU µs per deleted body, bench process", _us(bodies.cpu_per_blob)),
        ]
    return rows


def cost_rows(results: Results) -> list[Row]:
    """Host CPU per message against the baselines' CPU, and the host's peak RSS."""
    rows = []
    for level in results.accept:
        host = level.gateway.cpu_per_request("host")
        sdk = level.baseline.cpu_per_request("bench")
        rows.append(
            Row(
                "4 cost",
                f"CPU µs per accepted message, concurrency {level.concurrency} "
                "(baseline: send_message in the bench process)",
                _us(host),
                _us(sdk),
                ratio(host, sdk),
                CPU_PER_MESSAGE,
            )
        )
    if results.drain is not None and results.consumer is not None:
        host = results.drain.cpu_per_message("host")
        consumer = results.consumer.cpu_per_message
        rows.append(
            Row(
                "4 cost",
                "CPU µs per delivered message (baseline: receive + POST + delete loop)",
                _us(host),
                _us(consumer),
                ratio(host, consumer),
                CPU_PER_MESSAGE,
            )
        )
    if results.drain is not None:
        rows.append(Row("4 cost", "host peak RSS MiB, delivery", results.drain.peak_rss / MIB))
    return rows


def host_rows(noop: NoopResult, results: Results) -> list[Row]:
    """The no-op app beside the gateway (baseline column: the no-op app)."""
    rows = [
        Row(
            "5 host",
            f"queue: no-op messages settled/s, {noop.messages:,} queued, no latency",
            None,
            noop.drain_rate,
        )
    ]
    drain_host = results.drain.cpu_per_message("host") if results.drain else None
    rows.append(
        Row(
            "5 host",
            "queue: host CPU µs per message (baseline: no-op app)",
            _us(drain_host),
            _us(noop.drain_cpu_per_message),
            ratio(drain_host, noop.drain_cpu_per_message),
        )
    )
    gateway_by_level = {level.concurrency: level.gateway for level in results.accept}
    for http in noop.http:
        gateway = gateway_by_level.get(http.concurrency)
        rows.append(
            Row(
                "5 host",
                f"HTTP: requests/s, concurrency {http.concurrency} (baseline: no-op app)",
                gateway.throughput if gateway else None,
                http.throughput,
                ratio(gateway.throughput, http.throughput) if gateway else None,
            )
        )
        gateway_cpu = gateway.cpu_per_request("host") if gateway else None
        rows.append(
            Row(
                "5 host",
                f"HTTP: host CPU µs per request, concurrency {http.concurrency} "
                "(baseline: no-op app)",
                _us(gateway_cpu),
                _us(http.cpu_per_request("host")),
                ratio(gateway_cpu, http.cpu_per_request("host")),
            )
        )
    return rows


def model_rows(comparison: ModelComparison) -> list[Row]:
    """Each variant's rate against C ÷ L, and its CPU per message against the gateway's."""
    rows = []
    for run_ in comparison.runs:
        rows.append(
            Row(
                "6 model",
                f"msg/s, {run_.variant}, {run_.messages:,} messages, L = "
                f"{comparison.latency_ms} ms (baseline: ceiling C ÷ L, C = {comparison.in_flight})",
                run_.per_second,
                comparison.ceiling,
                ratio(run_.per_second, comparison.ceiling),
            )
        )
    gateway = comparison.run(GATEWAY)
    gateway_cpu = gateway.cpu_per_message if gateway else None
    for run_ in comparison.runs:
        rows.append(
            Row(
                "6 model",
                f"CPU µs per message, {run_.variant} (baseline: the gateway's variant)",
                _us(run_.cpu_per_message),
                _us(gateway_cpu),
                ratio(run_.cpu_per_message, gateway_cpu),
            )
        )
    return rows


def large_rows(large: LargeResult) -> list[Row]:
    """The worker's peak memory over many large deliveries, with and without the bound."""
    bounded, unbounded = large.bounded, large.unbounded
    return [
        Row(
            "7 large",
            f"worker peak RSS MiB, {bounded.messages} x 29 MB deliveries, LARGE_MESSAGES_AT_ONCE "
            f"{bounded.at_once} (baseline: the worker's share of a 2,048 MB instance)",
            bounded.peak_rss / MIB,
            INSTANCE_WORKER_MIB,
            ratio(bounded.peak_rss / MIB, INSTANCE_WORKER_MIB),
            LARGE_FITS,
        ),
        Row(
            "7 large",
            f"worker peak RSS MiB, the same with every delivery at once (LARGE_MESSAGES_AT_ONCE "
            f"{unbounded.at_once}, as before the bound)",
            unbounded.peak_rss / MIB,
            INSTANCE_WORKER_MIB,
            ratio(unbounded.peak_rss / MIB, INSTANCE_WORKER_MIB),
        ),
        Row(
            "7 large",
            "seconds from host ready to the last send, bounded (baseline: every one at once)",
            bounded.seconds,
            unbounded.seconds,
            ratio(bounded.seconds, unbounded.seconds),
        ),
        Row(
            "7 large",
            f"MiB per large delivery in flight (every one at once: peak over the idle "
            f"{large.idle_rss / MIB:.0f} MiB ÷ 24)",
            large.per_message_mib(),
        ),
    ]


def _route(run_: HostileRun) -> str:
    return "v1" if "/v1/" in run_.route else "v3"


def hostile_rows(hostile: HostileResult) -> list[Row]:
    """What the worst 30 MB bodies cost the host before it refuses them, against the budget."""
    floor = hostile.floor
    rows = [
        Row(
            "8 hostile",
            "30 MB refused unread (text/plain, 415): host CPU s / added MiB, what receiving it "
            "costs any route",
            f"{floor.cpu_seconds:.2f} / {floor.added_rss / MIB:.0f}",
        )
    ]
    for run_ in hostile.runs:
        what = f"{_route(run_)} {run_.name}"
        rows.append(
            Row(
                "8 hostile",
                f"{what}: host CPU s (baseline: the budget)",
                run_.cpu_seconds,
                HOSTILE_CPU_SECONDS,
                ratio(run_.cpu_seconds, HOSTILE_CPU_SECONDS),
                WITHIN_BUDGET,
            )
        )
        rows.append(
            Row(
                "8 hostile",
                f"{what}: added MiB, answer {run_.status} of {run_.answer_bytes:,} bytes "
                "(baseline: the budget)",
                run_.added_rss / MIB,
                HOSTILE_ADDED_MIB,
                ratio(run_.added_rss / MIB, HOSTILE_ADDED_MIB),
                WITHIN_BUDGET,
            )
        )
    return rows


def model_note(comparison: ModelComparison) -> str:
    """Which execution model the numbers favour, and on what grounds."""
    sync, sdk, async_ = comparison.run(GATEWAY), comparison.run(SDK), comparison.run(ASYNC)
    if (
        sync is None
        or async_ is None
        or sync.cpu_per_message is None
        or async_.cpu_per_message is None
    ):
        return "- Model: `def` and `async def` were not both measured; no verdict."
    cpu = ratio(async_.cpu_per_message, sync.cpu_per_message) or 0.0
    keeps_up = async_.per_second >= MODEL_KEEPS_UP * sync.per_second
    favoured = (
        "`async def` (aio SDK + httpx.AsyncClient)"
        if keeps_up and cpu < 1.0
        else "`def` on the thread pool (the gateway's model)"
    )
    note = (
        f"- Model: the numbers favour {favoured}: `async def` delivered "
        f"{async_.per_second:.0f} msg/s against {sync.per_second:.0f} for the gateway's `def` "
        f"and cost {cpu:.2f} times its CPU per message"
    )
    same_sdk = ratio(async_.cpu_per_message, sdk.cpu_per_message if sdk else None)
    if same_sdk is not None:
        note += f" ({same_sdk:.2f} times that of `def` on the same Azure SDK)"
    return note + f"; the aio tables client ran on azure-core's {comparison.async_transport}."


def all_rows(results: Results) -> list[Row]:
    """The table's rows, scenario by scenario."""
    rows = accept_rows(results.accept)
    if results.drain is not None:
        rows += delivery_rows(results.drain)
    rows += transport_rows(results.transport)
    rows += cost_rows(results)
    if results.noop is not None:
        rows += host_rows(results.noop, results)
    if results.model is not None:
        rows += model_rows(results.model)
    if results.large is not None:
        rows += large_rows(results.large)
    if results.hostile is not None:
        rows += hostile_rows(results.hostile)
    if results.storage is not None:
        rows += storage_rows(results.storage)
    if results.expire is not None:
        rows += expire_rows(results.expire)
    if results.expire_statuses is not None:
        rows += status_expire_rows(results.expire_statuses)
    rows += guard_rows(results.guards)
    return rows


def guard_rows(guards: list[GuardCost]) -> list[Row]:
    """Issue 17: storage calls and CPU per mail of a closed breaker and of brakes."""
    rows = []
    for guard in guards:
        rows.append(
            Row(
                "11 provider guards", f"storage calls per mail, {guard.guard}", guard.calls_per_mail
            )
        )
        rows.append(
            Row(
                "11 provider guards",
                f"CPU µs per mail, {guard.guard}, bench process",
                _us(guard.cpu_per_mail),
            )
        )
    return rows


def _cores(cpu: dict[str, float], seconds: float) -> str:
    return ", ".join(f"{name} {used / seconds:.2f}" for name, used in sorted(cpu.items()))


def notes(results: Results, args: argparse.Namespace) -> list[str]:
    """What the reader needs to read the table right, and anything that went wrong."""
    threads = args.host_threads or default_thread_count()
    out = [
        f"- Host thread pool: {threads} threads "
        + (
            "(PYTHON_THREADPOOL_THREAD_COUNT, as infra/ deploys it; --host-threads)."
            if args.host_threads
            else "(PYTHON_THREADPOOL_THREAD_COUNT unset: the Functions host's default)."
        )
    ]
    for app_dir in (ACCEPT_APP, NOOP_APP):
        if read_host_json(app_dir).get("extensions") != read_host_json(REPO).get("extensions"):
            out.append(
                f"- {app_dir.relative_to(REPO)}/host.json differs from host.json in `extensions`: "
                "copy it over, or its figures do not compare."
            )
    for level in results.accept:
        for name, run_ in (("gateway", level.gateway), ("baseline", level.baseline)):
            if run_.errors:
                out.append(
                    f"- Accept, concurrency {level.concurrency}, {name}: {run_.errors} failed "
                    "requests in the window (not counted in requests/s)."
                )
        out.append(
            f"- Accept, concurrency {level.concurrency}: CPU cores busy, gateway run: "
            f"{_cores(level.gateway.cpu, level.gateway.seconds)}; baseline run: "
            f"{_cores(level.baseline.cpu, level.baseline.seconds)}. Load generator: "
            f"{(level.gateway.cpu_per_request('bench') or 0) * US:.0f} µs of bench-process CPU "
            "per gateway request."
        )
    stalls = [
        f"accept c={level.concurrency} {name} {run_.storage_stall:.1f} s"
        for level in results.accept
        for name, run_ in (("gateway", level.gateway), ("baseline", level.baseline))
        if run_.storage_stall > STALL_SECONDS
    ]
    for name, stall in (
        ("delivery drain", results.drain.storage_stall if results.drain else 0.0),
        ("no-op drain", results.noop.storage_stall if results.noop else 0.0),
    ):
        if stall > STALL_SECONDS:
            stalls.append(f"{name} {stall:.1f} s")
    if stalls:
        out.append(
            "- Azurite stopped answering for a while (its 60 s queue clean-up) during: "
            + "; ".join(stalls)
            + ". Those figures understate the gateway and its baseline alike."
        )
    drain = results.drain
    if drain is not None:
        out.append(
            f"- Delivery: {drain.sent:,} of {drain.messages:,} sent"
            + (f" before the {args.drain_timeout:g} s timeout" if drain.timed_out else "")
            + f"; CPU cores busy over the drain: {_cores(drain.cpu, drain.ready_to_done_seconds)}."
        )
    for large in (results.large.bounded, results.large.unbounded) if results.large else ():
        if large.sent < large.messages:
            out.append(
                f"- Large messages, LARGE_MESSAGES_AT_ONCE {large.at_once}: only {large.sent} of "
                f"{large.messages} sent before the timeout."
            )
    if results.noop is not None and results.noop.timed_out:
        out.append(f"- No-op drain: only {results.noop.drained:,} settled before the timeout.")
    if results.model is not None:
        out.append(model_note(results.model))
    for hostile in results.hostile.runs if results.hostile else ():
        if not hostile.refused:
            answer = "no answer" if hostile.status is None else f"status {hostile.status}"
            out.append(
                f"- Hostile, {_route(hostile)} {hostile.name}: {answer} after "
                f"{hostile.seconds:.1f} s, not a refusal."
            )
    for rule in missed(all_rows(results)):
        out.append(f"- NOT met: {rule.scenario}, {rule.figure}.")
    return out


def command_line(argv: Sequence[str]) -> str:
    """The command as the reader would type it again."""
    tail = " ".join(shlex.quote(a) for a in argv)
    if os.environ.get("MAKELEVEL"):
        return "make bench" + (f" BENCH_ARGS={shlex.quote(tail)}" if tail else "")
    return "python -m bench" + (f" {tail}" if tail else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; print the table; write it to docs/performance.md when complete."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    started = time.monotonic()
    profiler = Profiler(args.profile.resolve()) if args.profile else None
    try:
        with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
            results = run(args, Path(tmp), profiler)
    except Exception as error:
        print(f"bench failed: {type(error).__name__}: {error}", file=sys.stderr)
        raise
    took = time.monotonic() - started
    rows = all_rows(results)
    table = render_table(rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            "## Results of the last run",
            "",
            f"`{command_line(arguments)}`, {stamp}, took {took / 60:.1f} min.",
            "",
            *machine_lines(),
            "",
            table,
            "",
            *notes(results, args),
        ]
    )
    print("\n" + section + "\n")
    if profiler is not None:
        print(profiler.summary(str(REPO)))
    complete = set(args.scenarios) == set(SCENARIOS)
    if complete and profiler is None and not args.no_write:
        write_results(args.output, section)
        print(f"written to {args.output}", file=sys.stderr)
    else:
        print(
            f"{args.output.name} not updated (partial, profiled or --no-write run)", file=sys.stderr
        )
    return 0

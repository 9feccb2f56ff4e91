"""How measurements become rows, targets and the command line in the report."""

from __future__ import annotations

import pytest

from bench.accept import AcceptLevel
from bench.load import LoadResult
from bench.report import Target
from bench.run import accept_rows, command_line, parse_args, transport_rows
from bench.transport import TransportComparison, TransportResult


def _load(requests: int, latency: float, cpu: float = 1.0) -> LoadResult:
    return LoadResult(
        concurrency=8, seconds=10.0, latencies=[latency] * requests, cpu={"host": cpu}
    )


def test_should_compare_throughput_and_p99_with_the_baseline() -> None:
    rows = accept_rows([AcceptLevel(8, _load(900, 0.02), _load(1000, 0.01))])
    throughput, latency = rows
    assert throughput.ratio == pytest.approx(0.9)
    assert throughput.met is True
    assert latency.gateway == "20.0 / 20.0 / 20.0"
    assert latency.ratio == pytest.approx(2.0)
    assert latency.met is True


def test_should_want_more_through_the_proxy_than_from_tls_handshakes_alone() -> None:
    # The official client direct: 100/s with its CA bundle loaded per send, 250/s without.
    direct = TransportComparison(
        0.0,
        TransportResult(500, 1.0, 0.1),
        TransportResult(100, 1.0, 1.0),
        official_ca_only=TransportResult(250, 1.0, 0.4),
    )
    more = TransportComparison(20.0, TransportResult(45, 1.0, 0.1), TransportResult(15, 1.0, 1.0))
    less = TransportComparison(20.0, TransportResult(45, 1.0, 0.1), TransportResult(25, 1.0, 1.0))

    sends_direct, *_, sends_more, _ = transport_rows([direct, more])
    *_, sends_less, _ = transport_rows([direct, less])

    assert sends_direct.ratio == pytest.approx(5.0)
    assert sends_direct.met is True
    assert sends_more.target == Target(">=", 2.0)  # 500/s against 250/s
    assert sends_more.ratio == pytest.approx(3.0)
    assert sends_more.met is True
    assert sends_less.ratio == pytest.approx(1.8)
    assert sends_less.met is False


def test_should_want_four_times_through_the_proxy_without_a_handshake_only_run() -> None:
    direct = TransportComparison(
        0.0, TransportResult(500, 1.0, 0.1), TransportResult(100, 1.0, 1.0)
    )
    delayed = TransportComparison(
        20.0, TransportResult(45, 1.0, 0.1), TransportResult(15, 1.0, 1.0)
    )

    *_, sends_delayed, _ = transport_rows([direct, delayed])

    assert sends_delayed.target == Target(">=", 4.0)
    assert sends_delayed.met is False


def test_should_name_the_command_as_it_was_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAKELEVEL", raising=False)
    assert command_line([]) == "python -m bench"
    assert command_line(["--seconds", "5"]) == "python -m bench --seconds 5"
    monkeypatch.setenv("MAKELEVEL", "1")
    assert command_line([]) == "make bench"
    assert command_line(["--seconds", "5"]) == "make bench BENCH_ARGS='--seconds 5'"


def test_should_parse_concurrency_levels_and_scenarios() -> None:
    args = parse_args(["--concurrency", "1,4", "--scenarios", "transport"])
    assert args.concurrency == [1, 4]
    assert args.scenarios == ["transport"]
    with pytest.raises(SystemExit):
        parse_args(["--scenarios", "nonsense"])

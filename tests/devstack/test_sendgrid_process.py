"""Tests against a running stand-in process: the wrapper, the control API, connection drops."""

from __future__ import annotations

import asyncio
import copy
import email
import email.policy
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.sendgrid_standin import MAX_BODY_BYTES, UNAUTHORIZED_BODY, SendGridStandIn
from tests.sendgrid_samples import minimal_payload, valid_payload


@pytest.fixture(scope="module")
def standin() -> Iterator[SendGridStandIn]:
    """One stand-in process on a free port for this module's process tests."""
    with SendGridStandIn(port=0) as running:
        yield running


@pytest.fixture
def sg(standin: SendGridStandIn) -> SendGridStandIn:
    """The running stand-in, reset before each test."""
    standin.reset()
    return standin


def send(sg: SendGridStandIn, payload: object, *, api_key: str | None = None) -> httpx.Response:
    """POST a mail send the way the gateway does."""
    headers = {} if api_key == "" else {"Authorization": f"Bearer {api_key or sg.api_key}"}
    return httpx.post(sg.mail_send_url, json=payload, headers=headers, timeout=10)


def test_should_listen_on_the_free_port_it_printed(sg: SendGridStandIn) -> None:
    assert sg.base_url.startswith("http://127.0.0.1:")
    assert int(sg.base_url.rsplit(":", 1)[1]) > 0
    assert httpx.get(f"{sg.base_url}/_standin/health").status_code == 200


def test_should_answer_401_without_api_key(sg: SendGridStandIn) -> None:
    response = send(sg, minimal_payload(), api_key="")
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED_BODY


def test_should_answer_401_with_wrong_api_key(sg: SendGridStandIn) -> None:
    response = send(sg, minimal_payload(), api_key="SG.revoked")
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED_BODY
    assert sg.mails() == []


def test_should_accept_with_202_and_message_id_and_write_both_files(sg: SendGridStandIn) -> None:
    response = send(sg, minimal_payload())
    assert response.status_code == 202
    assert response.content == b""
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22
    record = json.loads((sg.outbox / f"{message_id}.json").read_text())
    assert record["payload"] == minimal_payload()
    eml = email.message_from_bytes(
        (sg.outbox / f"{message_id}.eml").read_bytes(), policy=email.policy.default
    )
    assert eml["To"] == "ann@example.com"
    assert [m["x_message_id"] for m in sg.mails()] == [message_id]
    assert not [p for p in sg.outbox.iterdir() if p.name.startswith(".")]  # no temp files left


def test_should_answer_200_and_store_nothing_in_sandbox_mode(sg: SendGridStandIn) -> None:
    payload = minimal_payload()
    payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
    response = send(sg, payload)
    assert response.status_code == 200
    assert sg.mails() == []
    assert not (sg.outbox / f"{response.headers['X-Message-Id']}.json").exists()


def test_should_play_scripted_503s_then_accept(sg: SendGridStandIn) -> None:
    sg.script(
        [
            {"status": 503},
            {"status": 503, "body": {"errors": [{"message": "busy"}]}},
            {"status": 202},
        ]
    )
    statuses = [send(sg, minimal_payload()).status_code for _ in range(4)]
    assert statuses == [503, 503, 202, 202]
    assert len(sg.mails()) == 2
    log = sg.requests()
    assert [entry["status"] for entry in log] == [503, 503, 202, 202]
    assert [entry["scripted"] for entry in log] == [True, True, True, False]
    assert all(later["at"] >= earlier["at"] for earlier, later in itertools.pairwise(log))


def test_should_pass_scripted_headers_such_as_rate_limits(sg: SendGridStandIn) -> None:
    sg.script([{"status": 429, "headers": {"X-RateLimit-Reset": "1790000000"}}])
    response = send(sg, minimal_payload())
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Reset"] == "1790000000"


def test_should_drop_connection_so_httpx_sees_remote_protocol_error(sg: SendGridStandIn) -> None:
    sg.script([{"drop_connection": True}])
    with pytest.raises(httpx.RemoteProtocolError):
        send(sg, minimal_payload())
    assert sg.mails() == []
    assert [entry["outcome"] for entry in sg.requests()] == ["dropped"]
    assert send(sg, minimal_payload()).status_code == 202  # the next request is served normally


def test_should_reset_connection_so_httpx_sees_read_error(sg: SendGridStandIn) -> None:
    sg.script([{"reset_connection": True}])
    with pytest.raises(httpx.ReadError):
        send(sg, minimal_payload())


def test_should_store_the_mail_then_drop_when_scripted_to_accept(sg: SendGridStandIn) -> None:
    # The ambiguous case: SendGrid took the mail but the answer never arrived.
    sg.script([{"drop_connection": True, "accept": True}])
    with pytest.raises(httpx.RemoteProtocolError):
        send(sg, minimal_payload())
    assert len(sg.mails()) == 1


def test_should_honour_latency_without_blocking_concurrent_requests(sg: SendGridStandIn) -> None:
    sg.set_latency(400)

    async def burst() -> tuple[float, list[int]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            limits=limits, timeout=10, headers=sg.auth_headers()
        ) as client:
            started = time.monotonic()
            responses = await asyncio.gather(
                *(client.post(sg.mail_send_url, json=minimal_payload()) for _ in range(50))
            )
            return time.monotonic() - started, [r.status_code for r in responses]

    elapsed, statuses = asyncio.run(burst())
    assert statuses == [202] * 50
    assert 0.4 <= elapsed < 2.0  # 50 x 400 ms one after the other would take 20 s


def test_should_apply_scripted_delay_to_one_request(sg: SendGridStandIn) -> None:
    sg.script([{"status": 202, "delay_ms": 300}])
    started = time.monotonic()
    assert send(sg, minimal_payload()).status_code == 202
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert send(sg, minimal_payload()).status_code == 202
    assert time.monotonic() - started < 0.3


def test_should_forget_everything_on_reset(sg: SendGridStandIn) -> None:
    sg.set_latency(50)
    sg.script([{"status": 500}, {"status": 500}])
    assert send(sg, minimal_payload()).status_code == 500
    sg.reset()
    assert sg.requests() == []
    assert send(sg, minimal_payload()).status_code == 202


def test_should_leave_no_process_after_stop(tmp_path: Path) -> None:
    standin = SendGridStandIn(outbox=tmp_path / "outbox").start()
    pid = standin.pid
    assert pid is not None
    standin.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert (tmp_path / "outbox").is_dir()  # a caller-given outbox is kept


def test_should_keep_mail_content_out_of_the_logs(sg: SendGridStandIn) -> None:
    payload = copy.deepcopy(valid_payload())
    payload["personalizations"][0]["send_at"] = int(time.time())
    assert send(sg, payload).status_code == 202
    bad = minimal_payload()
    bad["personalizations"][0]["to"] = [{"email": "secret.person@example.com"}, {"email": "x"}]
    assert send(sg, bad).status_code == 400
    output = sg.output()
    assert "status=202" in output
    for secret in (
        "ann.lee@example.com",
        "Your order 1042",
        "has shipped",
        "secret.person",
        "mg_01HZX3Q9V7",
    ):
        assert secret not in output


def test_should_answer_413_to_a_body_over_30_mib(sg: SendGridStandIn) -> None:
    body = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    headers = {**sg.auth_headers(), "Content-Type": "application/json"}
    response = httpx.post(sg.mail_send_url, content=body, headers=headers, timeout=30)
    assert response.status_code == 413
    assert sg.mails() == []


def test_should_write_only_json_records_when_asked_for_no_eml(tmp_path: Path) -> None:
    with SendGridStandIn(outbox=tmp_path / "outbox", write_eml=False) as standin:
        response = send(standin, minimal_payload())
    assert response.status_code == 202
    message_id = response.headers["X-Message-Id"]
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [f"{message_id}.json"]

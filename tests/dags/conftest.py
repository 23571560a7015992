"""Fixtures of the DAG tests."""

from __future__ import annotations

import email
import json
from email import policy

import pytest

from tests.dags.approvals import approver  # noqa: F401 - fixture
from tests.helpers import free_port


@pytest.fixture
def smtp_sink(monkeypatch):
    """A real SMTP server (aiosmtpd) on loopback behind Airflow's ``smtp_default`` connection. ``messages``: each
    mail as received (raw text); ``take()``: (sorted recipients, subject) of each mail since the last take."""
    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self) -> None:
            self.messages: list[str] = []
            self.recipients: list[list[str]] = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd hook name
            self.recipients.append(sorted(envelope.rcpt_tos))
            self.messages.append(envelope.content.decode("utf-8", "replace"))
            return "250 OK"

        def take(self) -> list[tuple[list[str], str]]:
            out = [(to, str(email.message_from_string(raw, policy=policy.default)["subject"]))
                   for to, raw in zip(self.recipients, self.messages, strict=True)]
            self.messages.clear()
            self.recipients.clear()
            return out

    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.com"}}))
    yield sink
    ctl.stop()

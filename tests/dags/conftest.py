"""Fixtures of the DAG tests."""

from tests.dags.approvals import approver  # noqa: F401 - fixture

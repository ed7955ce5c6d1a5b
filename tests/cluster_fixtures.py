"""Fixtures for the scale-out tests: a loopback S3 (moto's server), a migrated PostgreSQL
schema for the shared counters (rate limits, LLM budgets) and, in
``tests/integration/test_ray_backend.py``, a local Ray. Imported by ``tests/conftest.py``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

POSTGRES_ENV = "MEDSERVE_TEST_POSTGRES_URI"

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "medserve-test",
    "AWS_SECRET_ACCESS_KEY": "medserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), for the whole session: a real HTTP S3 API
    that boto3 talks to exactly as to AWS or MinIO."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # the dev extra has moto[server]; CI turns this skip into a failure
        pytest.skip(f"moto[server] is not installed: {exc}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_uri(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback S3, with the environment pointing boto3 at it (as an
    operator's would point it at MinIO or AWS); returns ``s3://bucket/prefix``."""
    import boto3

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"medserve-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/artifacts"


def s3_environment(endpoint: str) -> dict[str, str]:
    """What a child process (a server, a Ray worker) needs to reach the loopback S3."""
    return {**S3_ENV, "AWS_ENDPOINT_URL_S3": endpoint, **_no_proxy()}


def _no_proxy() -> dict[str, str]:
    present = os.environ.get("NO_PROXY", "")
    return {"NO_PROXY": ",".join(p for p in (present, "127.0.0.1", "localhost") if p)}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray on 127.0.0.1 for the session (2 CPUs, no dashboard), started by this process
    (which stops it at the end); yields its address for ``--ray-address``. Skips, with the
    reason, where Ray cannot start (CI turns that skip into a failure)."""
    # before Ray is imported: Ray reads it once, at import, and only with it does a local node
    # take 127.0.0.1 as its address (else ray.init turns 127.0.0.1 into the host's own IP and
    # its gRPC servers listen on every interface)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as exc:
        pytest.skip(f"Ray is not installed (pip install 'medserve[ray]'): {exc}")
    try:
        context = ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=200 << 20,
            log_to_driver=False,
        )
    except Exception as exc:  # no shared memory, no free port, ...
        pytest.skip(f"a local Ray could not start here: {type(exc).__name__}: {exc}")
    address = str(context.address_info["gcs_address"])
    if not address.startswith("127.0.0.1:"):
        ray.shutdown()
        pytest.fail(f"the test's Ray is not on loopback: its GCS is at {address}")
    try:
        yield address
    finally:
        ray.shutdown()


@contextmanager
def postgres_schema(prefix: str, needed_by: str) -> Iterator[str]:
    """A URI for an empty schema of its own on ``MEDSERVE_TEST_POSTGRES_URI`` (dropped after),
    as each node of a cluster would reach one database; skips, naming ``needed_by``, without
    the variable (CI turns that skip into a failure)."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{needed_by} needs PostgreSQL: set {POSTGRES_ENV} (see .ci/run)")
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = sa.engine.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield url.render_as_string(hide_password=False)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


@contextmanager
def migrated_postgres_schema(prefix: str, needed_by: str) -> Iterator[str]:
    """``postgres_schema`` with the registry's tables created (``upgrade heads``, so
    ``cluster_counters`` too): the set-up the shared-counter tests (rate limits, budgets) share."""
    from medserve.core.store.sql import SqlRegistryStore

    with postgres_schema(prefix, needed_by) as uri:
        SqlRegistryStore(uri).close()  # migrates
        yield uri


@pytest.fixture
def migrated_postgres_uri(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated registry in a schema of its own (``upgrade heads`` creates
    ``cluster_counters``), as every node of a cluster would reach one database."""
    with migrated_postgres_schema("medserve_counters", request.module.__name__) as uri:
        yield uri

"""DuckDB reading ``s3://`` tables in place: the httpfs extension and an S3 secret from the environment.

httpfs is found the way DuckDB users have it: already installed (``~/.duckdb/extensions``), as the
``duckdb-extension-httpfs`` pip package when its build matches the installed DuckDB, or by
``INSTALL httpfs`` (network). The secret is built from the variables boto3 and the AWS CLI read
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``); with no key in the
environment, DuckDB's ``credential_chain`` provider (the ``aws`` extension) is tried, else the
bucket is read anonymously.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import duckdb

from saev_core.tables.query import sql_str


class HttpfsUnavailable(RuntimeError):
    """DuckDB cannot read the URL in place here (no httpfs for this DuckDB, or not an s3:// URL)."""


def _pip_extension() -> Path | None:
    """httpfs from the ``duckdb-extension-httpfs`` package, when built for this DuckDB version."""
    spec = importlib.util.find_spec("duckdb_extension_httpfs")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    return path if path.exists() else None


def load_httpfs(con: duckdb.DuckDBPyConnection) -> None:
    """Load httpfs into ``con`` or raise HttpfsUnavailable naming what was tried."""
    pip = _pip_extension()
    tried = [] if pip else [f"no duckdb-extension-httpfs built for DuckDB {duckdb.__version__}"]
    for sql in ("LOAD httpfs", *([f"LOAD {sql_str(str(pip))}"] if pip else []), "INSTALL httpfs; LOAD httpfs"):
        try:
            con.execute(sql)
            return
        except duckdb.Error as e:
            tried.append(f"{sql}: {str(e).strip().splitlines()[0]}")
    raise HttpfsUnavailable("DuckDB's httpfs extension is not available (" + "; ".join(tried) + ")")


def s3_secret_sql(env: Mapping[str, str] = os.environ) -> str | None:
    """``CREATE SECRET`` for the S3 settings in ``env``; None when it holds no key (see ``create_s3_secret``)."""
    if not env.get("AWS_ACCESS_KEY_ID"):
        return None
    opts = {"KEY_ID": env["AWS_ACCESS_KEY_ID"], "SECRET": env.get("AWS_SECRET_ACCESS_KEY", "")}
    if env.get("AWS_SESSION_TOKEN"):
        opts["SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["REGION"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    extra = []
    if endpoint:  # MinIO, moto, R2...: path-style addressing, TLS as the URL says
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        opts["ENDPOINT"] = url.netloc
        opts["URL_STYLE"] = "path"
        extra.append(f"USE_SSL {'true' if url.scheme == 'https' else 'false'}")
    body = ", ".join(["TYPE s3", "PROVIDER config", *(f"{k} {sql_str(v)}" for k, v in opts.items()), *extra])
    return f"CREATE OR REPLACE SECRET saev_s3 ({body})"


def create_s3_secret(con: duckdb.DuckDBPyConnection, env: Mapping[str, str] = os.environ) -> None:
    """The environment's S3 credentials as a DuckDB secret; without keys, the credential chain
    (instance roles, ~/.aws) if DuckDB's aws extension loads, else anonymous access."""
    sql = s3_secret_sql(env)
    if sql is not None:
        con.execute(sql)
        return
    try:
        con.execute("CREATE OR REPLACE SECRET saev_s3 (TYPE s3, PROVIDER credential_chain)")
    except duckdb.Error:
        pass  # no aws extension: a public bucket still reads


def open_s3(con: duckdb.DuckDBPyConnection, url: str) -> None:
    """Make ``con`` read the ``s3://`` URL in place, or raise HttpfsUnavailable."""
    if urlparse(url).scheme not in ("s3", "s3a"):
        raise HttpfsUnavailable(f"DuckDB reads s3:// URLs in place; {url.split('://', 1)[0]}:// is not one")
    load_httpfs(con)
    create_s3_secret(con)

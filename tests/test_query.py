"""saev_core.tables.query and `saev query` on real Parquet tables written with the saev_core.tables.schema schemas."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from saev_core.cli.app import app
from saev_core.tables.query import QueryRefused, check_sql, connect, datasets, open_views, render_table, run_query, table_names
from saev_core.io import write_json
from saev_core.tables.schema import SCORES, TABLES, manifest_path, part_name, partition_dir


def write(root, table: str, rows: list[dict], dataset: str, sae_id: str | None = "sae0") -> None:
    path = partition_dir(root, table, dataset, sae_id if table != "samples" else None) / part_name(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES[table]), path)


def commit(root, dataset: str, sae_id: str = "sae0") -> None:
    """The scoring manifest, which `saev score` writes last: only then do the views show the partition."""
    write_json(manifest_path(root, dataset, sae_id), {"kind": "saev.scores", "dataset": dataset, "sae_id": sae_id})


def scores_rows(prefix: str, values: list[float]) -> list[dict]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    n = len(values)
    return [{"sample_id": f"{prefix}{i}", "scorer": "saev", "score": v, "rank": order.index(i) + 1,
             "percentile": (n - order.index(i)) / n} for i, v in enumerate(values)]


def add_dataset(root, name: str, sae_id: str = "sae0") -> None:
    write(root, "scores", scores_rows(f"{name}-", [0.5, 2.5, 1.5]), name, sae_id)
    write(root, "sample_features", [
        {"sample_id": f"{name}-0", "feature_id": 3, "modality": "image", "n_active_tokens": 4, "max_act": 1.5, "sum_act": 3.0},
        {"sample_id": f"{name}-0", "feature_id": 3, "modality": "text", "n_active_tokens": 2, "max_act": 0.5, "sum_act": 0.75},
        {"sample_id": f"{name}-1", "feature_id": 7, "modality": "text", "n_active_tokens": 1, "max_act": 2.0, "sum_act": 2.0},
    ], name, sae_id)
    write(root, "feature_stats", [
        {"feature_id": 3, "firing_rate": 0.1, "firing_rate_image": 0.2, "firing_rate_text": 0.05, "cross_modal_weight": 0.8,
         "kind": "cross-modal", "n_top_image": 5, "n_top_text": 5},
        {"feature_id": 7, "firing_rate": 0.01, "firing_rate_image": 0.0, "firing_rate_text": 0.02, "cross_modal_weight": 0.0,
         "kind": "text-only", "n_top_image": 0, "n_top_text": 9},
    ], name, sae_id)
    write(root, "samples", [{"sample_id": f"{name}-{i}", "row_index": i, "n_image_tokens": 16, "n_text_tokens": 10 + i,
                             "question": f"q{i}", "answer": "a", "chosen": None, "rejected": None, "image_ref": None}
                            for i in range(3)], name)
    commit(root, name, sae_id)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "tables"
    add_dataset(root, "alpha", "sae0")
    add_dataset(root, "2024", "7")  # numeric-looking partition values must stay text
    return root


def test_printed_views_run_in_plain_duckdb(root):
    """`saev query --print-views` is SQL that a plain DuckDB connection (or the duckdb CLI's .read)
    runs, with saev's rule: a partition shows once its scoring manifest exists."""
    import duckdb

    printed = CliRunner().invoke(app, ["query", "--tables", str(root), "--print-views"])
    assert printed.exit_code == 0, printed.output
    plain = duckdb.connect()
    plain.execute(printed.stdout)
    saev = connect(root)
    sql = "SELECT * FROM {} ORDER BY ALL"
    for table in table_names():
        rows = plain.sql(sql.format(table)).fetchall()
        assert rows and rows == [tuple(r.values()) for r in q(saev, sql.format(table))]
    write(root, "scores", scores_rows("late-", [1.0]), "late")  # written, not committed: hidden from both
    assert plain.execute("SELECT count(*) FROM scores WHERE dataset = 'late'").fetchall() == [(0,)]
    commit(root, "late")
    assert plain.execute("SELECT count(*) FROM scores WHERE dataset = 'late'").fetchall() == [(1,)]
    assert q(saev, "SELECT count(*) AS n FROM scores WHERE dataset = 'late'") == [{"n": 1}]


def test_s3_secret_from_the_environment():
    """The variables boto3 reads become DuckDB's S3 secret; a custom endpoint means path-style
    addressing, with TLS as its scheme says; no key means no config secret."""
    from saev_core.tables.duckdb_s3 import s3_secret_sql

    assert s3_secret_sql({"AWS_REGION": "eu-west-1"}) is None
    sql = s3_secret_sql({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "s'x", "AWS_DEFAULT_REGION": "us-east-1",
                         "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_SESSION_TOKEN": "tok"})
    assert sql == ("CREATE OR REPLACE SECRET saev_s3 (TYPE s3, PROVIDER config, KEY_ID 'AK', SECRET 's''x', SESSION_TOKEN 'tok', "
                   "REGION 'us-east-1', ENDPOINT '127.0.0.1:9000', URL_STYLE 'path', USE_SSL false)")
    aws = s3_secret_sql({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "S", "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "x",
                         "AWS_ENDPOINT_URL_S3": "https://minio.example:443", "AWS_ENDPOINT_URL": "http://other"})
    assert "REGION 'eu-west-1'" in aws and "ENDPOINT 'minio.example:443'" in aws and aws.endswith("USE_SSL true)")


def test_a_url_duckdb_cannot_read_is_mirrored_with_a_note(root, tmp_path, monkeypatch):
    """Where DuckDB cannot read the URL in place (here memory://, which only fsspec knows), `saev query`
    mirrors the tables locally and says why on stderr."""
    import fsspec

    monkeypatch.setenv("SAEV_CACHE", str(tmp_path / "cache"))
    fsspec.filesystem("memory").put(str(root) + "/", "memory://saev-q/tables", recursive=True)
    out = CliRunner().invoke(app, ["query", "--tables", "memory://saev-q/tables", "--format", "csv",
                                   "SELECT count(*) AS n FROM scores"])
    assert out.exit_code == 0 and out.stdout.split() == ["n", "6"], out.output
    assert "memory:// is not one; mirroring memory://saev-q/tables locally" in out.stderr
    assert list((tmp_path / "cache").glob("artifacts/*/scores/dataset=alpha/sae_id=sae0/*.parquet"))


def q(con, sql, params=None):
    return run_query(con, sql, params).read_all().to_pylist()


def test_views_round_trip_with_partition_columns(root):
    con = connect(root)
    assert sorted(r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()) == sorted(table_names())
    rows = q(con, "SELECT * FROM scores WHERE dataset = 'alpha' ORDER BY rank")
    assert [r["sample_id"] for r in rows] == ["alpha-1", "alpha-2", "alpha-0"]
    assert rows[0] == {"sample_id": "alpha-1", "scorer": "saev", "score": 2.5, "rank": 1, "percentile": 1.0,
                       "dataset": "alpha", "sae_id": "sae0"}
    types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE sample_features)").fetchall())
    assert types == {"sample_id": "VARCHAR", "feature_id": "INTEGER", "modality": "VARCHAR", "n_active_tokens": "INTEGER",
                     "max_act": "FLOAT", "sum_act": "FLOAT", "dataset": "VARCHAR", "sae_id": "VARCHAR"}
    assert q(con, "SELECT dataset, sae_id, count(*) AS n FROM sample_features GROUP BY ALL ORDER BY dataset") == [
        {"dataset": "2024", "sae_id": "7", "n": 3}, {"dataset": "alpha", "sae_id": "sae0", "n": 3}]
    assert q(con, "SELECT max(cross_modal_weight) AS w FROM feature_stats WHERE kind = 'cross-modal'") == [{"w": pytest.approx(0.8)}]
    assert "sae_id" not in con.sql("SELECT * FROM samples").columns
    assert q(con, "SELECT sum(n_text_tokens) AS t FROM samples WHERE dataset = '2024'") == [{"t": 33}]
    assert datasets(con) == ["2024", "alpha"]


def test_dataset_added_after_connect_is_visible(root):
    con = connect(root)
    assert datasets(con) == ["2024", "alpha"]
    add_dataset(root, "late", "sae0")
    assert datasets(con) == ["2024", "alpha", "late"]
    assert q(con, "SELECT count(*) AS n FROM scores WHERE dataset = 'late'") == [{"n": 3}]


def test_hidden_temporary_partition_is_ignored(root):
    """An atomic write in progress ('.dataset=x.tmp-...') must neither show up nor break the view."""
    hidden = root / "scores" / ".dataset=beta.tmp-1" / "sae_id=sae0"
    hidden.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(scores_rows("b", [1.0]), schema=SCORES), hidden / part_name(0))
    assert q(connect(root), "SELECT DISTINCT dataset FROM scores ORDER BY 1") == [{"dataset": "2024"}, {"dataset": "alpha"}]


def test_a_partition_shows_only_once_committed(root):
    """A scoring run that failed (or is still writing) has no manifest: its files are not read."""
    con = connect(root)
    write(root, "scores", scores_rows("half-", [1.0, 2.0]), "half", "sae0")
    write(root, "sample_features", [{"sample_id": "half-0", "feature_id": 1, "modality": "text", "n_active_tokens": 1,
                                     "max_act": 1.0, "sum_act": 1.0}], "half", "sae0")
    write(root, "samples", [{"sample_id": "half-0", "row_index": 0, "n_image_tokens": 1, "n_text_tokens": 1, "question": "q",
                             "answer": None, "chosen": None, "rejected": None, "image_ref": None}], "half")
    for table in TABLES:
        assert q(con, f"SELECT count(*) AS n FROM {table} WHERE dataset = 'half'") == [{"n": 0}], table
    assert datasets(con) == ["2024", "alpha"]
    commit(root, "half")
    assert q(con, "SELECT count(*) AS n FROM scores WHERE dataset = 'half'") == [{"n": 2}]
    assert q(con, "SELECT count(*) AS n FROM samples WHERE dataset = 'half'") == [{"n": 1}]
    assert datasets(con) == ["2024", "alpha", "half"]


def test_empty_tables_are_typed_views(tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    con = connect(root)
    for table, schema in TABLES.items():
        result = run_query(con, f"SELECT * FROM {table}").read_all()
        assert result.num_rows == 0
        assert result.column_names == schema.names + ["dataset", "sae_id"][: 1 if table == "samples" else 2]
        for field in schema:
            assert result.schema.field(field.name).type == field.type
    assert q(con, "SELECT count(*) AS n, max(score) AS m FROM scores") == [{"n": 0, "m": None}]
    assert datasets(con) == []
    add_dataset(root, "first")  # a table empty at connect time fills without reconnecting
    assert q(con, "SELECT count(*) AS n FROM scores") == [{"n": 3}]


def test_missing_root_says_to_score_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="saev score"):
        connect(tmp_path / "nope")


def test_parameters_are_bound(root):
    con = connect(root)
    top = q(con, "SELECT sample_id FROM scores WHERE dataset = $dataset AND scorer = $scorer ORDER BY score DESC LIMIT $k",
            {"dataset": "alpha", "scorer": "saev", "k": "2"})
    assert top == [{"sample_id": "alpha-1"}, {"sample_id": "alpha-2"}]
    assert q(con, "SELECT count(*) AS n FROM sample_features WHERE sample_id = ?", ["2024-0"]) == [{"n": 2}]
    # A value is data, never SQL: an injection attempt matches nothing and drops nothing.
    assert q(con, "SELECT count(*) AS n FROM scores WHERE dataset = $d", {"d": "alpha' OR '1'='1"}) == [{"n": 0}]


@pytest.mark.parametrize("sql, says", [
    ("DROP VIEW scores", "DROP statements are not allowed"),
    ("INSERT INTO scores VALUES ('x', 'saev', 1, 1, 1, 'a', 'b')", "INSERT statements are not allowed"),
    ("CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("DELETE FROM scores", "DELETE statements are not allowed"),
    ("COPY (SELECT * FROM scores) TO '/tmp/saev-stolen.csv'", "COPY statements are not allowed"),
    ("EXPORT DATABASE '/tmp/saev-export'", "EXPORT statements are not allowed"),
    ("ATTACH '/tmp/saev-other.duckdb' AS other", "ATTACH statements are not allowed"),
    ("DETACH memory", "DETACH statements are not allowed"),
    ("INSTALL httpfs", "LOAD statements are not allowed"),
    ("LOAD httpfs", "LOAD statements are not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("RESET lock_configuration", "SET statements are not allowed"),
    ("PRAGMA threads = 1", "SET statements are not allowed"),  # DuckDB parses it as SET
    ("PRAGMA table_info('scores')", "PRAGMA statements are not allowed"),
    ("CALL checkpoint()", "CALL statements are not allowed"),
    ("SELECT 1; DROP VIEW scores", "exactly one statement"),
    ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv() is not allowed"),
    ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "table function read_parquet() is not allowed"),
    ("SELECT * FROM glob('/etc/*')", "table function glob() is not allowed"),
    ("SELECT * FROM query('SELECT 1')", "table function query() is not allowed"),
    ("SELECT * FROM '/etc/passwd'", "reading the file '/etc/passwd' is not allowed"),
    ("WITH s AS (SELECT * FROM scores) SELECT * FROM s JOIN 'data.csv' USING (sample_id)", "reading the file 'data.csv'"),
    ("SELECT (SELECT count(*) FROM read_text('/etc/hostname')) AS n", "table function read_text() is not allowed"),
])
@pytest.mark.parametrize("via", ["saev query", "connect().sql", "connect().execute"])
def test_refused_statements(root, sql, says, via):
    """One contract for `saev query` (run_query) and the Python connection, escape by escape."""
    con = connect(root)
    run = {"saev query": lambda s: run_query(con, s), "connect().sql": lambda s: con.sql(s).fetchall(),
           "connect().execute": lambda s: con.execute(s).fetchall()}[via]
    with pytest.raises(QueryRefused, match="refused: .*" + says.replace("(", r"\(").replace(")", r"\)")):
        run(sql)
    assert q(con, "SELECT count(*) AS n FROM scores") == [{"n": 6}]  # nothing changed


@pytest.mark.parametrize("template, says", [
    ("COPY (SELECT * FROM scores) TO '{root}/x.csv'", "COPY statements are not allowed"),
    ("COPY (SELECT * FROM scores LIMIT 1) TO '{part}' (FORMAT parquet)", "COPY statements are not allowed"),
    ("CREATE OR REPLACE VIEW scores AS SELECT 1 AS sample_id", "CREATE statements are not allowed"),
    ("CREATE TEMP TABLE t AS SELECT * FROM scores", "CREATE statements are not allowed"),
    ("SELECT * FROM read_parquet('{part}')", "table function read_parquet() is not allowed"),
])
def test_the_python_connection_cannot_write_inside_the_root(root, template, says):
    """The tables root is readable, so DuckDB's file sandbox alone would let COPY TO overwrite a part file."""
    part = next((root / "scores").glob("dataset=alpha/sae_id=*/*.parquet"))
    before = part.read_bytes()
    con = connect(root)
    with pytest.raises(QueryRefused, match=says.replace("(", r"\(").replace(")", r"\)")):
        con.sql(template.format(root=root, part=part))
    assert part.read_bytes() == before and not (root / "x.csv").exists()
    assert q(con, "SELECT count(*) AS n FROM scores") == [{"n": 6}]


def test_python_results_read_but_never_write(root, tmp_path):
    con = connect(root)
    result = con.sql("SELECT sample_id, score FROM scores WHERE dataset = $d ORDER BY score DESC", {"d": "alpha"})
    assert result.columns == ["sample_id", "score"] and len(result.fetchall()) == 3
    assert list(result.df()["sample_id"]) == ["alpha-1", "alpha-2", "alpha-0"]
    assert result.fetch_arrow_table().num_rows == 3
    for write in ("write_csv", "to_parquet", "create_view", "query", "insert_into"):
        with pytest.raises(AttributeError, match="read-only result"):
            getattr(result, write)
    with pytest.raises(AttributeError, match="connect\\(root, sandbox=False\\)"):
        con.register("t", pa.table({"a": [1]}))
    with connect(root, sandbox=False) as plain:  # the explicit opt-out: a plain DuckDB connection
        plain.execute(f"COPY (SELECT * FROM scores) TO '{tmp_path / 'out.csv'}'")
    assert (tmp_path / "out.csv").exists()


def test_allowed_read_only_forms(root):
    for sql in ["WITH t AS (SELECT 1 AS a) SELECT * FROM t", "VALUES (1), (2)", "DESCRIBE scores", "SUMMARIZE scores",
                "SHOW TABLES", "EXPLAIN SELECT * FROM scores", "FROM range(3)", "SELECT * FROM duckdb_settings()"]:
        assert check_sql(sql) == sql


def test_sandbox_holds_without_the_parser_check(root):
    """The connection itself cannot read outside the root or lift its own settings."""
    import duckdb

    con = open_views(root)
    with pytest.raises(duckdb.PermissionException):
        con.sql("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    # The tables root itself stays readable through the table functions.
    assert con.sql(f"SELECT count(*) FROM read_parquet('{root}/scores/*/*/*.parquet')").fetchall() == [(6,)]
    # A notebook may opt out of the sandbox (run_query still refuses writes).
    open_con = connect(root, sandbox=False)
    open_con.execute(f"COPY (SELECT * FROM scores) TO '{root.parent / 'copy.csv'}'")
    assert (root.parent / "copy.csv").exists()
    with pytest.raises(QueryRefused):
        run_query(open_con, "COPY (SELECT 1) TO '/tmp/x.csv'")


def test_render_table_aligns():
    text = render_table(pa.table({"name": ["a", "bbbb"], "score": [2.0, 0.125], "n": pa.array([1, None], pa.int32())}))
    assert text.splitlines() == ["name  score     n", "----  -----  ----", "a       2.0     1", "bbbb  0.125  NULL"]


def test_cli_prints_a_table(root):
    result = CliRunner().invoke(app, ["query", "SELECT sample_id, score FROM scores WHERE dataset = $d ORDER BY score DESC",
                                      "--tables", str(root), "--param", "d=alpha", "--limit", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["sample_id", "score"]
    assert lines[2].split() == ["alpha-1", "2.5"] and lines[3].split() == ["alpha-2", "1.5"]
    assert "(3 rows, 1 not shown" in result.output


def test_cli_json_format(root):
    result = CliRunner().invoke(app, ["query", "SELECT dataset, count(*) AS n FROM samples GROUP BY ALL ORDER BY 1",
                                      "--tables", str(root), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"dataset": "2024", "n": 3}, {"dataset": "alpha", "n": 3}]


def test_cli_writes_csv_and_parquet(root, tmp_path):
    sql = "SELECT sample_id, feature_id, max_act, dataset FROM sample_features ORDER BY dataset, sample_id, modality"
    for name in ("out.csv", "out.parquet"):
        out = tmp_path / "exports" / name
        result = CliRunner().invoke(app, ["query", sql, "--tables", str(root), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"wrote 6 rows to {out}" in result.output
        table = pacsv.read_csv(out) if name.endswith(".csv") else pq.read_table(out)
        assert table.num_rows == 6 and table.column_names == ["sample_id", "feature_id", "max_act", "dataset"]
        assert table.column("sample_id")[0].as_py() == "2024-0"
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["out.csv", "out.parquet"]  # no temp files left


def test_cli_bad_suffix_refusal_and_sql_error_exit_2(root, tmp_path):
    runner = CliRunner()
    bad_suffix = runner.invoke(app, ["query", "SELECT 1", "--tables", str(root), "--out", str(tmp_path / "x.txt")])
    assert bad_suffix.exit_code == 2 and ".csv or .parquet" in bad_suffix.output
    refused = runner.invoke(app, ["query", "DROP VIEW scores", "--tables", str(root)])
    assert refused.exit_code == 2 and "refused: DROP statements are not allowed" in refused.output
    assert refused.exception is None or isinstance(refused.exception, SystemExit)
    outside = runner.invoke(app, ["query", "SELECT * FROM read_csv('/etc/passwd')", "--tables", str(root)])
    assert outside.exit_code == 2 and "read_csv() is not allowed" in outside.output
    error = runner.invoke(app, ["query", "SELECT no_such_column FROM scores", "--tables", str(root)])
    assert error.exit_code == 2 and "no_such_column" in error.output and "Traceback" not in error.output
    missing = runner.invoke(app, ["query", "SELECT 1", "--tables", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "saev score" in missing.output

"""SQL over the feature tables with DuckDB: one view per table, sandboxed for user SQL.

Each view reads its table's Parquet files by glob at every query (DuckDB re-binds views per
query), so a dataset scored after ``connect`` shows up with no re-registration; dataset and
sae_id come from the hive directory names, typed VARCHAR so a dataset called ``2024`` stays text.
A table with no files yet is an empty view with the right columns, so queries on a fresh root work.

User SQL (``saev query``) may read the tables and nothing else, and may not change anything:

* ``check_sql`` parses with DuckDB's own parser and allows one SELECT-like statement (SELECT,
  WITH, VALUES, DESCRIBE, SUMMARIZE, SHOW, EXPLAIN of those); table functions are limited to
  generators and catalog listings, and ``FROM 'file.csv'`` is refused, for a clear message.
* The connection itself is the second guard: ``enable_external_access = false`` with
  ``allowed_directories`` = the tables root (plus DuckDB's own spill directory), then
  ``lock_configuration = true`` so no statement can lift it. A file read that slips past the
  parser check still fails, and is reported as a refusal. (DuckDB's allowed directories are
  writable too, so the parser check is what keeps COPY TO away from the tables.)
* ``connect`` (the Python API) holds the same contract as ``saev query``: a
  :class:`ReadOnlyConnection` runs every SQL text through ``check_sql`` and hands back results
  that can only be read. ``connect(root, sandbox=False)`` is the explicit opt-out: a plain
  DuckDB connection with the views. saev's own stages use ``open_views``.

User values are bound as parameters (``$dataset``, ``?``), never formatted into SQL.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import duckdb
import pyarrow as pa

from saev_core.io import is_url
from saev_core.tables.schema import PARTITIONS, TABLES

ALLOWED = ("SELECT (also WITH, VALUES, DESCRIBE, SUMMARIZE, SHOW) or EXPLAIN of one, over the views "
           + ", ".join(TABLES))
# Table functions that only generate rows or list the catalog; everything else (read_*, glob,
# parquet_*, query, arrow_scan, checkpoint, ...) reads files, runs hidden SQL or has side effects.
SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "repeat", "repeat_row", "json_each",
                                  "json_tree", "pg_timezone_names", "icu_calendar_names"})
SAFE_TABLE_FUNCTION_PREFIXES = ("duckdb_", "pragma_")
_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
                 pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
_EXPLAIN = re.compile(r"^\s*explain\s+(?:analy[sz]e\s+)?(?:\([^)]*\)\s*)?(.*)$", re.IGNORECASE | re.DOTALL)
_PATHLIKE = re.compile(r"[/\\:.]")


class QueryRefused(ValueError):
    """User SQL that would write, change settings or read outside the tables."""


def table_names() -> list[str]:
    return list(TABLES)


def sql_str(s: str) -> str:
    """A SQL string literal (for what DuckDB cannot take as a parameter: paths in view bodies, secrets)."""
    return "'" + s.replace("'", "''") + "'"


# DuckDB 2.0 reads an empty glob as no rows (allow_empty); before it, a table with no files when the
# views are made gets the typed empty view, and shows rows from the next connection on.
_ALLOW_EMPTY = int(duckdb.__version__.split(".")[0]) >= 2


def _view_sql(root: str, table: str, has_files: bool = True) -> str:
    """Typed empty rows UNION ALL BY NAME the files: the columns are right even with no files
    (``allow_empty`` alone yields a lone ``empty`` column, dropped here).

    Only committed partitions show: those whose scoring manifest exists (``saev score`` writes it
    last, and removes it first when it replaces a partition), so a run that failed or is still
    writing leaves nothing a query reads. ``root`` is an absolute path or an s3:// URL."""
    keys = PARTITIONS[table]
    typed = [f"NULL::{_DUCKDB_TYPES[f.type]} AS {f.name}" for f in TABLES[table]] + [f"NULL::VARCHAR AS {k}" for k in keys]
    if not has_files:
        return f"CREATE OR REPLACE VIEW {table} AS SELECT {', '.join(typed)} WHERE false"
    # One glob level per partition key (not **): hidden temporary directories such as
    # '.dataset=x.tmp-123' from an atomic write in progress are not matched.
    glob = "/".join([root, table, *(f"{k}=*" for k in keys), "*.parquet"])
    hive_types = "{" + ", ".join(f"{sql_str(k)}: 'VARCHAR'" for k in keys) + "}"
    manifests = sql_str(f"{root}/manifests/dataset=*/sae_id=*.json")
    # A manifest's name ends in dataset=<d>/sae_id=<s>.json; anchored at the end, the root's own path never matches.
    if "sae_id" in keys:
        mine, pattern = "'dataset=' || dataset || '/sae_id=' || sae_id", r"'(dataset=[^/]+/sae_id=[^/]+)\.json$'"
    else:
        mine, pattern = "'dataset=' || dataset", r"'(dataset=[^/]+)/sae_id=[^/]+\.json$'"
    theirs = f"regexp_extract(file, {pattern}, 1)"
    committed = f"{mine} IN (SELECT {theirs} FROM glob({manifests}))"
    return (f"CREATE OR REPLACE VIEW {table} AS SELECT COLUMNS(lambda c: c <> 'empty') FROM ("
            f"SELECT {', '.join(typed)} WHERE false UNION ALL BY NAME "
            f"SELECT * FROM read_parquet({sql_str(glob)}, hive_partitioning = true, union_by_name = true, "
            f"hive_types = {hive_types}{', allow_empty = true' if _ALLOW_EMPTY else ''})) WHERE {committed}")


def _root_text(root: str | Path) -> str:
    """The root as the views name it: an s3:// URL as given, a local directory resolved and checked."""

    if is_url(root):
        text = str(root).rstrip("/")
    else:
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"tables root {path} does not exist; run `saev score` first to write the feature tables")
        text = str(path)
    if re.search(r"[*?\[\]{}]", text):
        raise ValueError(f"tables root {text} contains glob characters (*?[]{{}}); move it to a plain path")
    return text


def views_sql(root: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> str:
    """The views of the tables under ``root`` as SQL that plain DuckDB runs (``duckdb -c '.read
    views.sql'``, ``con.execute(text)``), with the same committed-partitions rule as saev's.
    ``con`` (which can read the root) lets DuckDB before 2.0 see which tables have files yet."""
    text = _root_text(root)
    files = {t: _ALLOW_EMPTY or con is None or bool(con.execute(
        f"SELECT count(*) FROM glob({sql_str('/'.join([text, t, '**', '*.parquet']))})").fetchone()[0]) for t in TABLES}
    head = ("-- s3:// is read through httpfs: first LOAD httpfs and make an S3 secret, e.g.\n"
            "-- CREATE SECRET (TYPE s3, PROVIDER credential_chain);\n") if "://" in text else ""
    return head + "".join(_view_sql(text, t, files[t]) + ";\n" for t in TABLES)


def connect(root: str | Path, memory_limit: str | None = None, threads: int | None = None, *,
            sandbox: bool = True) -> "ReadOnlyConnection | duckdb.DuckDBPyConnection":
    """The feature tables under ``root`` as DuckDB views, for notebooks and scripts.

    With ``sandbox`` (default) the connection is read-only the way ``saev query`` is: one
    SELECT-like statement at a time over the views, nothing written, no settings changed, no file
    read outside the root. ``sandbox=False`` gives a plain DuckDB connection that may also read
    and write other files (``run_query`` on it still refuses writes). An ``s3://`` root is read in
    place through httpfs (``saev_core.tables.duckdb_s3``), or HttpfsUnavailable says why not."""
    con = open_views(root, memory_limit, threads, sandbox=sandbox)
    return ReadOnlyConnection(con) if sandbox else con


def open_views(root: str | Path, memory_limit: str | None = None, threads: int | None = None, *,
               sandbox: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per feature table under ``root`` (saev's
    stages run their own, fixed SQL on it). ``sandbox`` locks file access to the root."""
    from saev_core.tables.duckdb_s3 import open_s3

    text = _root_text(root)
    # DuckDB removes a spill directory it created when the connection closes.
    spill = Path(tempfile.gettempdir()) / f"saev-duckdb-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"temp_directory": str(spill)}
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    if threads is not None:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    try:
        con.execute("SET enable_progress_bar = false")
        if is_url(text):
            open_s3(con, text)
        con.execute(views_sql(text, con))
    except BaseException:
        con.close()
        raise
    if sandbox:
        con.execute("SET allowed_directories = $dirs", {"dirs": [f"{text}/"]})
        con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET lock_configuration = true")
    return con


def _refusal(e: duckdb.PermissionException) -> QueryRefused:
    return QueryRefused(f"refused: {str(e).splitlines()[0]}; only the tables root can be read")


class ReadOnlyResult:
    """A query's result (a relation from ``sql``, the executed connection from ``execute``) that
    can be read in every usual form and nothing else (a DuckDB relation also offers
    ``write_csv``, ``to_parquet``, ``create_view`` and ``query``; a connection everything)."""

    _READS = ("fetchall", "fetchone", "fetchmany", "fetchdf", "df", "to_df", "pl", "arrow", "fetch_arrow_table",
              "to_arrow_table", "fetchnumpy", "fetch_record_batch", "record_batch", "to_arrow_reader", "show")
    _ATTRS = ("columns", "types", "dtypes", "shape", "description")

    def __init__(self, relation: duckdb.DuckDBPyRelation):
        self._rel = relation

    def __getattr__(self, name: str):
        if name in self._ATTRS:
            return getattr(self._rel, name)
        if name not in self._READS:
            raise AttributeError(f"a read-only result has no {name!r} (it offers {', '.join(self._READS)}); "
                                 "use `saev query --out FILE` to export, or connect(root, sandbox=False)")
        method = getattr(self._rel, name)

        def read(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except duckdb.PermissionException as e:
                raise _refusal(e) from None
        return read

    def __len__(self) -> int:
        return len(self._rel)

    def __repr__(self) -> str:
        return repr(self._rel)


class ReadOnlyConnection:
    """The views of the feature tables, read-only: every SQL text passes ``check_sql`` (the
    contract of ``saev query``) before DuckDB sees it."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> ReadOnlyResult:
        check_sql(query)
        try:
            return ReadOnlyResult(self._con.sql(query, params=params or None))
        except duckdb.PermissionException as e:
            raise _refusal(e) from None

    query = sql

    def execute(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> ReadOnlyResult:
        """Run the query now, as DuckDB's ``execute`` does; fetch from what this returns
        (``.fetchone()``, ``.fetchall()``, ``.df()``)."""
        check_sql(query)
        try:
            self._con.execute(query, params or None)
        except duckdb.PermissionException as e:
            raise _refusal(e) from None
        return ReadOnlyResult(self._con)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "ReadOnlyConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str):
        raise AttributeError(f"the read-only feature-tables connection has no {name!r}: it offers sql/query/execute and "
                             "close; connect(root, sandbox=False) gives a plain DuckDB connection")


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _check_select(sql: str, parser: duckdb.DuckDBPyConnection) -> None:
    """Refuse table functions and string table names (``FROM 'x.csv'``) that would read files."""
    tree = json.loads(parser.execute("SELECT json_serialize_sql($1::VARCHAR)", [sql]).fetchone()[0])
    if tree.get("error"):
        raise QueryRefused(f"refused: could not analyse the statement ({tree.get('error_message')}); allowed: {ALLOWED}")
    for node in _walk(tree["statements"]):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            name = str(node.get("function", {}).get("function_name", "")).lower()
            if name not in SAFE_TABLE_FUNCTIONS and not name.startswith(SAFE_TABLE_FUNCTION_PREFIXES):
                raise QueryRefused(f"refused: table function {name}() is not allowed (it can read files or run other "
                                   f"SQL); query the views {', '.join(TABLES)}")
        elif kind == "BASE_TABLE" and _PATHLIKE.search(str(node.get("table_name", ""))):
            raise QueryRefused(f"refused: reading the file {node['table_name']!r} is not allowed; "
                               f"query the views {', '.join(TABLES)}")


def check_sql(sql: str) -> str:
    """Return ``sql`` if it is one read-only statement over the views, else raise QueryRefused."""
    parser = duckdb.connect()
    try:
        statements = parser.extract_statements(sql)  # a syntax error raises duckdb.ParserException
        if len(statements) != 1:
            raise QueryRefused(f"refused: give exactly one statement, got {len(statements)}; allowed: {ALLOWED}")
        st = statements[0]
        if st.type == duckdb.StatementType.EXPLAIN:
            inner = _EXPLAIN.match(st.query)
            if inner is None:
                raise QueryRefused(f"refused: could not read the EXPLAIN statement; allowed: {ALLOWED}")
            check_sql(inner.group(1))
        elif st.type == duckdb.StatementType.SELECT:
            _check_select(st.query, parser)
        else:
            raise QueryRefused(f"refused: {st.type.name} statements are not allowed (saev query only reads); "
                               f"allowed: {ALLOWED}")
    finally:
        parser.close()
    return sql


def run_query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None,
              batch_size: int = 65536) -> pa.RecordBatchReader:
    """Check ``sql``, bind ``params`` (a list for ``?``, a mapping for ``$name``) and stream the result.

    A file access blocked by the sandbox is raised as QueryRefused; other DuckDB errors as they are
    (an error in the middle of the result surfaces while reading the batches, as OSError).
    """
    check_sql(sql)
    try:
        relation = con.sql(sql, params=params or None)
        return relation.to_arrow_reader(batch_size)
    except duckdb.PermissionException as e:
        raise _refusal(e) from None


def datasets(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Datasets with rows in any table (sorted)."""
    union = " UNION ".join(f"SELECT DISTINCT dataset FROM {t}" for t in TABLES)
    return sorted(r[0] for r in con.sql(union).fetchall())


def row_indices(con: duckdb.DuckDBPyConnection, dataset: str, sample_ids: list[str]) -> dict[str, int]:
    """sample_id -> its row in the source dataset, as scoring recorded it in `samples`."""
    return dict(con.execute("SELECT sample_id, row_index FROM samples WHERE dataset = $d AND list_contains($ids, sample_id)",
                            {"d": dataset, "ids": list(sample_ids)}).fetchall())


def the_sae(con: duckdb.DuckDBPyConnection, tables: str | Path, sae_id: str | None = None, *, table: str = "scores",
            dataset: str | None = None, scorer: str | None = None) -> str:
    """The SAE of these tables: ``sae_id`` when given (it must have rows in ``table``), else the
    only SAE with rows there (for ``dataset`` and ``scorer``, when given)."""
    where = {"dataset": dataset, "scorer": scorer}
    where = {k: v for k, v in where.items() if v is not None}
    sql = f"SELECT DISTINCT sae_id FROM {table}" + (" WHERE " + " AND ".join(f"{k} = ${k}" for k in where) if where else "")
    saes = sorted(r[0] for r in con.execute(sql, where).fetchall())
    what = f"{scorer!r} " if scorer else ""
    of = f" for dataset {dataset!r}" if dataset else ""
    if not saes:
        raise ValueError(f"no {what}{table}{of} under {tables}; run `saev score` first")
    if sae_id is None:
        if len(saes) > 1:
            raise ValueError(f"{table}{of} from several SAEs under {tables}: {saes}; choose one with --sae-id")
        return saes[0]
    if sae_id not in saes:
        raise ValueError(f"unknown sae_id {sae_id!r}; valid ones: {saes}")
    return sae_id


def render_table(table: pa.Table, max_width: int = 60) -> str:
    """Aligned plain-text rendering (numbers right-aligned, long text cut with '…')."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            s = f"{v:.6g}"
            s = s if any(c in s for c in ".enai") else s + ".0"  # 2.0 stays visibly a float
        else:
            s = "NULL" if v is None else str(v)
        s = s.replace("\n", " ")
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cols = [[cell(v) for v in table.column(i).to_pylist()] for i in range(table.num_columns)]
    lines = []
    widths = [max([len(name), *map(len, col)]) for name, col in zip(table.column_names, cols)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
               for f in table.schema]
    lines.append("  ".join(n.rjust(w) if r else n.ljust(w) for n, w, r in zip(table.column_names, widths, numeric)))
    lines.append("  ".join("-" * w for w in widths))
    for row in zip(*cols):
        lines.append("  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(row, widths, numeric)))
    return "\n".join(line.rstrip() for line in lines)


def write_result(reader: pa.RecordBatchReader, out: str | Path) -> int:
    """Stream a result into a .csv or .parquet file (atomically); returns the row count."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from saev_core.io import atomic_path

    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out {out}: the file name must end in .csv or .parquet")
    n = 0
    with atomic_path(Path(out)) as tmp:
        writer = pq.ParquetWriter(tmp, reader.schema, compression="zstd") if suffix == ".parquet" else pacsv.CSVWriter(tmp, reader.schema)
        with writer:
            for batch in reader:
                writer.write_batch(batch)
                n += batch.num_rows
    return n


def read_head(reader: pa.RecordBatchReader, limit: int) -> tuple[pa.Table, int]:
    """The first ``limit`` rows (0: all) and the result's full row count, reading the rest without keeping it."""
    head, n = [], 0
    for batch in reader:
        if limit == 0 or n < limit:
            head.append(batch if limit == 0 else batch.slice(0, limit - n))
        n += batch.num_rows
    return pa.Table.from_batches(head, reader.schema), n


def format_rows(table: pa.Table, fmt: str) -> str:
    """A result as an aligned ``table``, ``csv`` or ``json``."""
    if fmt == "table":
        return render_table(table)
    if fmt == "json":
        return json.dumps(table.to_pylist(), default=str)
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    w.writerows([list(r.values()) for r in table.to_pylist()])
    return buf.getvalue().rstrip("\n")


def count_note(n: int, shown: int) -> str:
    """``(N rows)``, saying how many were left out of the printed head and how to see them."""
    hidden = n - shown
    return f"({n} row{'' if n == 1 else 's'}" + (f", {hidden} not shown: raise --limit or use --out" if hidden else "") + ")"

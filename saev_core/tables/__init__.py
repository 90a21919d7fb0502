"""Feature tables: their Parquet schema and partitions, and DuckDB views over them (local or S3)."""

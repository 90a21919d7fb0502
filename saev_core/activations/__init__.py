"""Dump stage: a model and a dataset in, residual-stream activation shards (Parquet) and a manifest out."""

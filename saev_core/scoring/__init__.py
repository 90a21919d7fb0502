"""Scoring stage: activation shards and an SAE in; per-sample feature tables, scores and the feature browser out."""

"""Alignment stage: scores in; the kept subset (a Hub-ready dataset), TRL-aligned models and their evaluation out."""

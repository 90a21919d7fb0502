"""Thin Prefect tasks over saev_core: each takes a config dict, calls one saev_core function,
and returns paths and manifests (never tensors)."""

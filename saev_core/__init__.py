"""saev_core: the SAE-V library (no Prefect imports here; orchestration lives in tasks/ and flows/)."""

__version__ = "0.2.0"

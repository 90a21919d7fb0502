"""The line protocol of the bench's peer-library workers (``_saelens_train.py``, ``_sparsify_train.py``).

They run in the peers' own venvs, so this imports only the standard library. A worker calls
``serve`` with its ``run(job) -> reply`` and a hello dict: the hello goes out first, then one
JSON reply per JSON job line on stdin; an exception becomes ``{"ok": false, "error": ...}`` and
the worker keeps serving. Everything else the libraries print goes to stderr.
"""

from __future__ import annotations

import json
import sys

PROTOCOL = sys.stdout
sys.stdout = sys.stderr  # keep stdout for replies only


def serve(run, hello: dict) -> None:
    PROTOCOL.write(json.dumps({"ok": True, **hello}) + "\n")
    PROTOCOL.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = run(json.loads(line))
        except Exception as e:  # report, keep serving
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        PROTOCOL.write(json.dumps(reply) + "\n")
        PROTOCOL.flush()

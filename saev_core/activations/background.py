"""Work ahead of the consumer in a background thread, with a bounded queue."""

from __future__ import annotations

import queue
import threading
from typing import Iterator


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead, re-raising its errors.

    The dump's image decoding and processor then overlap the forward pass, and the activation
    reader's decoding overlaps the SAE step (on GPU fully, on CPU as far as the GIL allows:
    PIL, tokenizers, pyarrow, numpy and torch release it).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterator:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:  # a source left early runs its own clean-up here, not at interpreter exit
            if hasattr(iterator, "close"):
                iterator.close()

    thread = threading.Thread(target=work, daemon=True, name="saev-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()  # the worker stops at its next item: no thread outlives its consumer

"""GPU stages hold a slot of Prefect global concurrency limits (the cluster's and the machine's),
on a real Prefect server: with a limit of 1, two GPU tasks of one flow never run at once."""

from __future__ import annotations

import socket
import threading
import time

import tasks
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.common import GPU_LIMIT, gpu_limits, gpu_task


def _two_at_once(step) -> None:
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def two():
        futures = [step.submit(i) for i in range(2)]
        return [f.result() for f in futures]

    two()


def test_gpu_tasks_take_the_machines_global_concurrency_limit(prefect_server):
    machine = f"{GPU_LIMIT}-{socket.gethostname()}"
    running, most = [0], [0]
    lock = threading.Lock()

    @gpu_task("probe-gpu")
    def busy(i: int) -> None:
        with lock:
            running[0] += 1
        end = time.monotonic() + 5  # gives the other task time to start beside this one, as it would without the slot
        while time.monotonic() < end and running[0] < 2:
            time.sleep(0.05)
        with lock:
            most[0] = max(most[0], running[0])
            running[0] -= 1

    # no limit created: nothing is held, and both tasks run side by side (each waits for the other)
    assert gpu_limits() == []
    meet = threading.Barrier(2, timeout=120)

    @gpu_task("probe-gpu-free")
    def together(i: int) -> None:
        meet.wait()

    _two_at_once(together)

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=machine, limit=1))
    try:
        assert gpu_limits() == [machine]
        _two_at_once(busy)
        assert most[0] == 1  # one GPU on this machine: the second task waited for the first's slot
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(machine)


def test_every_gpu_stage_holds_a_slot():
    """Every task tagged gpu in tasks/ is a gpu_task (it takes the slot, not only the tag)."""
    import importlib
    import pkgutil

    from prefect import Task

    found = []
    for mod in pkgutil.iter_modules(tasks.__path__):
        for obj in vars(importlib.import_module(f"tasks.{mod.name}")).values():
            if isinstance(obj, Task) and "gpu" in obj.tags:
                found.append(obj.name)
                assert getattr(obj.fn, "gpu_slot", False), f"{obj.name} is tagged gpu but holds no GPU slot: use gpu_task"
    assert {"dump-activations", "train-sae", "score-dataset", "align", "evaluate-model"} <= set(found)

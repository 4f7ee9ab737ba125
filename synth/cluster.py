"""`runtime.executor: ray`: a pool of Ray actors that compute shards while the driver alone writes.

Why Ray Core and not Ray Data's LLM processor: that processor keeps only the first of `n` samples
and writes its output without an atomic rename, which would break the promise the local executor
keeps (every row exactly once, complete shards only, resume after any kill). Here a worker is an
actor that loads its model once and returns each shard's result (Arrow tables, small summaries);
the driver keeps the shard bookkeeping, writes every file atomically and updates the manifest.
A worker that dies mid-shard (OOM killer, SIGKILL, a lost node) is restarted by Ray and its shard
is dispatched again; the first result of a shard is the only one the driver ever sees, so nothing
is written twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from synth.errors import UserError, first_line
from synth.specs import RaySpec, RuntimeSpec

if TYPE_CHECKING:
    from synth.recipe import Recipe

INSTALL_HINT = "install it with: pip install 'distillery[ray]' (or set runtime.executor: local)"
CONNECT_HINT = (
    "start it (`ray start --head`), or fix runtime.ray.address / $RAY_ADDRESS (host:port of the head); "
    "leave both unset to start a local cluster"
)
MAX_ATTEMPTS = 3  # dispatches of one shard: a shard that kills its worker every time stops the run
PROBE_S = 0.5  # pause between probes of a replica Ray is restarting
RESTART_WAIT_S = 300.0  # a replica silent for longer (restarts used up, node gone) gets no more work


@contextmanager
def ray_session(spec: RaySpec) -> Iterator[Any]:
    """Connect to the cluster (`runtime.ray.address`, else `$RAY_ADDRESS`, else start a local one).

    A session the caller already opened (`ray.init` in a notebook or a test) is used as it is and
    left open; one opened here is shut down at the end.
    """
    try:
        import ray
    except ImportError:
        raise UserError("runtime.executor=ray needs Ray, which is not installed", INSTALL_HINT) from None
    if ray.is_initialized():
        yield ray
        return
    address = spec.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    try:
        ray.init(
            address=address,
            num_cpus=spec.local_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise UserError(
            f"could not connect to {where}: {first_line(exc)}",
            CONNECT_HINT,
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a cluster's address (`ray.init` keeps
    retrying an unreachable head for a long time before it gives up)."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise UserError(
            f"the Ray cluster address {address!r} has no port",
            "write it as host:port (head-node:6379, or ray://head-node:10001 for Ray Client) in "
            "runtime.ray.address or $RAY_ADDRESS",
        )
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5):
            return
    except OSError as exc:
        raise UserError(
            f"could not connect to the Ray cluster at {address}: {exc}",
            CONNECT_HINT,
        ) from None


def enter_folder(path: str) -> None:
    """Run a worker in the driver's working folder, where it exists (one machine, or a shared file
    system), so that relative paths and users' check modules resolve as they do for the driver."""
    if os.path.isdir(path):
        os.chdir(path)


class Worker:
    """What every Ray worker shares: it runs in the driver's folder with the recipe's runtime settings
    and builds what it works with once (`build`: an engine, the curate checks). A UserError met while
    building is kept for `ready`, which the pool turns into one line instead of an actor's traceback."""

    def __init__(self, cwd: str, recipe: Recipe, *args: Any) -> None:
        from synth import runtime

        enter_folder(cwd)
        self.error: tuple[str, str | None] | None = None
        try:
            runtime.configure(recipe.runtime)
            self.tool = self.build(recipe, *args)
        except UserError as exc:
            self.error = (exc.message, exc.hint)

    def build(self, recipe: Recipe, *args: Any) -> Any:
        raise NotImplementedError

    def ready(self) -> tuple[str, str | None] | None:
        return self.error


def worker_gpus(runtime: RuntimeSpec, engine: str | None, tensor_parallel: int, cluster_gpus: float) -> float:
    """GPUs one worker reserves: `runtime.ray.num_gpus`, else on a cluster with GPUs (and a device that
    is not the CPU) vLLM's tensor-parallel size or one for a transformers model; else none."""
    if runtime.ray.num_gpus is not None:
        return runtime.ray.num_gpus
    if cluster_gpus <= 0 or runtime.device == "cpu":
        return 0.0
    if engine == "vllm":
        return float(tensor_parallel)
    return 1.0 if engine == "transformers" else 0.0


def replica_count(spec: RaySpec, resources: dict[str, float], num_gpus: float, shards: int) -> int:
    """Workers to start: `runtime.ray.replicas`, else as many as the cluster fits; never more than the
    cluster fits now (the others would wait for resources forever) nor than there are shards."""
    fits = int(resources.get("CPU", 0) // spec.num_cpus)
    if num_gpus > 0:
        fits = min(fits, int(resources.get("GPU", 0) // num_gpus))
    if fits < 1:
        need = f"{spec.num_cpus:g} CPU(s)" + (f" and {num_gpus:g} GPU(s)" if num_gpus > 0 else "")
        raise UserError(
            f"the Ray cluster has room for no worker: each needs {need}, the cluster has "
            f"{resources.get('GPU', 0):g} GPU(s) and {resources.get('CPU', 0):g} CPU(s)",
            "lower runtime.ray.num_gpus / num_cpus (for a vLLM teacher: teacher.vllm.tensor_parallel_size), "
            "or add nodes",
        )
    return max(1, min(spec.replicas or fits, fits, shards))


class ActorPool:
    """Replicas of one worker class, each built once; payloads go to whichever replica is idle.

    The worker class is a `Worker` subclass with the method named in `map`; its args start with the
    driver's working folder and the recipe. Ray restarts a killed replica (`max_restarts`); its payload is sent
    again, at most `MAX_ATTEMPTS` times in all.
    """

    def __init__(
        self,
        ray: Any,
        worker: type,
        args: tuple[Any, ...],
        replicas: int,
        num_cpus: float,
        num_gpus: float,
        max_restarts: int,
    ) -> None:
        from ray.exceptions import RayError

        self.ray = ray
        remote = ray.remote(worker).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0
        )
        self.actors = [remote.remote(*args) for _ in range(replicas)]
        self.redone = 0  # payloads dispatched again after their worker died
        try:
            errors = ray.get([a.ready.remote() for a in self.actors])
        except RayError as exc:  # a set-up that crashed (not a UserError): one line, and no actor left behind
            self.close()
            raise UserError(
                f"a Ray worker failed to start: {first_line(exc, 200)}",
                "see the worker logs (ray logs); every node needs Distillery and the model installed",
            ) from None
        for error in errors:
            if error:
                self.close()
                raise UserError(*error)

    def map(
        self,
        method: str,
        count: int,
        payload: Callable[[int], Any],
        describe: Callable[[int], str],
        ordered: bool = False,
    ) -> Iterator[tuple[int, Any]]:
        """(i, result) for payloads 0..count-1. `payload(i)` is built when it is sent (a shard is read
        only then, and again if its worker died); `describe(i)` names it in errors.

        Results come as they finish, or with `ordered` in index order; then no payload more than two
        per replica ahead of the next one due is sent, so few results wait in memory.
        A replica whose call failed because Ray is restarting it is probed with `ready` until it
        answers (calls to a restarting actor fail at once), and only then gets work again; one that
        is dead for good, or silent for `RESTART_WAIT_S`, gets no more work.
        """
        from ray.exceptions import ActorDiedError, ObjectLostError, RayActorError, RayTaskError

        pending = deque(range(count))
        attempts = [0] * count
        busy: dict[Any, tuple[int, int | None]] = {}  # call -> (replica, payload index; None for a probe)
        idle = list(range(len(self.actors)))
        down_since: dict[int, float] = {}  # replica -> when a call to it first failed
        done: dict[int, Any] = {}  # results waiting for their turn (ordered)
        due = 0  # the next index to hand on (ordered)
        window = 2 * len(self.actors)

        def in_flight() -> int:
            return sum(i is not None for _, i in busy.values())

        while pending or in_flight():
            while pending and idle and (not ordered or pending[0] < due + window):
                actor, i = idle.pop(), pending.popleft()
                attempts[i] += 1
                busy[getattr(self.actors[actor], method).remote(payload(i))] = (actor, i)
            if not busy:
                raise UserError(
                    f"every Ray worker is gone; {len(pending)} shard(s) were not done",
                    "see the worker logs (ray logs), then run the same command again: finished shards are kept",
                )
            [ref], _ = self.ray.wait(list(busy), num_returns=1)
            actor, i = busy.pop(ref)
            try:
                result = self.ray.get(ref)
            except (RayActorError, ObjectLostError) as exc:
                if i is not None:
                    if attempts[i] >= MAX_ATTEMPTS:
                        raise UserError(
                            f"{describe(i)}: its Ray worker died {attempts[i]} times ({first_line(exc, 200)})",
                            "look for out-of-memory kills in the worker logs (ray logs), lower generate.batch_size "
                            "or generate.prompts_per_shard, then run the same command again: finished shards are kept",
                        ) from None
                    self.redone += 1
                    pending.appendleft(i)
                if isinstance(exc, ObjectLostError):  # the result was lost (its node), not the worker
                    idle.append(actor)
                    continue
                down_since.setdefault(actor, time.monotonic())
                # a probe told "died" (not "restarting") means for good: restarts used up, node gone
                gone = i is None and isinstance(exc, ActorDiedError)
                if not gone and time.monotonic() - down_since[actor] < RESTART_WAIT_S and pending:
                    time.sleep(PROBE_S)  # Ray is restarting it: ask again shortly
                    busy[self.actors[actor].ready.remote()] = (actor, None)
                continue
            except RayTaskError as exc:
                if isinstance(exc.cause, UserError):
                    raise exc.cause from None
                raise
            if i is None and result:  # the restarted replica's set-up failed
                raise UserError(*result)
            down_since.pop(actor, None)
            idle.append(actor)
            if i is None:
                continue
            if not ordered:
                yield i, result
                continue
            done[i] = result
            while due in done:
                yield due, done.pop(due)
                due += 1

    def close(self) -> None:
        """Stop the replicas (frees their models and GPU memory now, not when the session ends)."""
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)

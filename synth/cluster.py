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


@contextmanager
def ray_session(spec: RaySpec) -> Iterator[Any]:
    """Connect to the cluster (`runtime.ray.address`, else `$RAY_ADDRESS`, else start a local one).

    No address means a new local cluster (`address="local"`), never Ray's own default, which reads
    /tmp/ray/ray_current_cluster: a stale file left by a killed head hangs there, and a live
    `ray start` cluster on the machine would be joined without a word. A session the caller already
    opened (`ray.init` in a notebook or a test) is used as it is and left open; one opened here is
    shut down at the end.
    """
    try:
        import ray
    except ImportError:
        raise UserError("runtime.executor=ray needs Ray, which is not installed", INSTALL_HINT) from None
    if ray.is_initialized():
        yield ray
        return
    address = cluster_address(spec)
    if address != "local":
        check_reachable(address)
    try:
        ray.init(
            address=address,
            num_cpus=spec.local_cpus if address == "local" else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address != "local" else "a local Ray cluster"
        raise UserError(
            f"could not connect to {where}: {first_line(exc)}",
            CONNECT_HINT,
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_address(spec: RaySpec) -> str:
    """`runtime.ray.address`, else `$RAY_ADDRESS`, else "local" (start a new local cluster)."""
    return spec.address or os.environ.get("RAY_ADDRESS", "").strip() or "local"


def refuse_stray_address(runtime: RuntimeSpec) -> None:
    """$RAY_ADDRESS with the local executor: refused like `runtime.ray.address` is, since the user who
    set it expects the cluster to do the work and would otherwise see it run here without a word."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and runtime.executor != "ray":
        raise UserError(
            f"$RAY_ADDRESS is {env!r} but runtime.executor is {runtime.executor!r}: the work would run on this "
            "machine, not on that cluster",
            "set runtime.executor: ray to use the cluster, or unset RAY_ADDRESS to run here",
        )


# HTTP/2's connection preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0)
GRPC_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PROBE_TIMEOUT_S = 5.0


def check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when no Ray head answers at a cluster's address: nothing
    listening (`ray.init` keeps retrying for a long time), or another server on that port (a web
    server there passes a plain port probe and `ray.init` then hung for over 600 s). A Ray head's GCS
    and its client server speak gRPC, so the probe opens an HTTP/2 connection and waits for the
    server's SETTINGS frame, which any HTTP/2 server sends first."""
    import importlib.util
    import socket

    if address == "auto":
        return
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise UserError(
            f"the Ray cluster address {address!r} uses Ray Client (ray://), which needs grpcio: not installed",
            "pip install 'ray[client]', or run from a node of the cluster with the head's address host:6379",
        )
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise UserError(
            f"the Ray cluster address {address!r} has no port",
            "write it as host:port (head-node:6379, or ray://head-node:10001 for Ray Client) in "
            "runtime.ray.address or $RAY_ADDRESS",
        )
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=PROBE_TIMEOUT_S) as conn:
            conn.settimeout(PROBE_TIMEOUT_S)
            conn.sendall(GRPC_PREFACE)
            head = conn.recv(9)
    except TimeoutError:
        head = b""
    except OSError as exc:
        raise UserError(f"could not connect to the Ray cluster at {address}: {exc}", CONNECT_HINT) from None
    if len(head) < 4 or head[3] != 0x04:
        raise UserError(
            f"{address} answers, but not as a Ray head (no gRPC/HTTP/2 reply within {PROBE_TIMEOUT_S:g} s: "
            f"{'nothing' if not head else repr(head[:12])})",
            CONNECT_HINT,
        )


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


def worker_gpus(runtime: RuntimeSpec, engine: str | None, model_parallel: int, cluster_gpus: float) -> float:
    """GPUs one worker reserves: `runtime.ray.num_gpus`, else on a cluster with GPUs (and a device that
    is not the CPU) vLLM's tensor x pipeline parallel size or one for a transformers model; else none."""
    if runtime.ray.num_gpus is not None:
        return runtime.ray.num_gpus
    if cluster_gpus <= 0 or runtime.device == "cpu":
        return 0.0
    if engine == "vllm":
        return float(model_parallel)
    return 1.0 if engine == "transformers" else 0.0


def spans_nodes(nodes: list[dict[str, float]], num_gpus: float) -> bool:
    """Whether a replica needs more GPUs than any one node has, while the cluster has them in all: it
    then runs in a placement group of one-GPU bundles over several nodes (vLLM's Ray executor places
    its tensor/pipeline-parallel workers there), instead of waiting forever for one node that big."""
    most = max((n.get("GPU", 0) for n in nodes), default=0)
    return num_gpus > most and float(num_gpus).is_integer() and sum(n.get("GPU", 0) for n in nodes) >= num_gpus


def replica_bundles(spec: RaySpec, num_gpus: float) -> list[dict[str, float]]:
    """One replica's placement group over several nodes: a one-GPU bundle per model shard; the first
    also holds the worker's CPUs (the worker itself runs there and reserves no GPU)."""
    return [{"GPU": 1.0, "CPU": float(spec.num_cpus)}] + [{"GPU": 1.0}] * (int(num_gpus) - 1)


def replica_count(
    spec: RaySpec, nodes: list[dict[str, float]], num_gpus: float, shards: int, span: bool = False
) -> int:
    """Workers to start: `runtime.ray.replicas`, else as many as the cluster fits; never more than the
    cluster fits now (the others would wait for resources forever) nor than there are shards.

    Counted node by node (`nodes`: each alive node's resources): one worker's CPUs and GPUs must sit
    on one node, so two nodes of 1 GPU each fit no worker of 2 GPUs (summed over the cluster they
    seemed to fit one, which then waited forever to be placed), unless the worker can `span` nodes (a
    vLLM engine, through its Ray executor) and `spans_nodes`: then as many as the cluster's GPUs hold."""
    fits = 0
    if span and num_gpus > 0 and spans_nodes(nodes, num_gpus):
        fits = int(sum(n.get("GPU", 0) for n in nodes) // num_gpus)
    else:
        for node in nodes:
            here = int(node.get("CPU", 0) // spec.num_cpus)
            if num_gpus > 0:
                here = min(here, int(node.get("GPU", 0) // num_gpus))
            fits += here
    if fits < 1:
        need = f"{spec.num_cpus:g} CPU(s)" + (f" and {num_gpus:g} GPU(s)" if num_gpus > 0 else "")
        sizes = ", ".join(f"{n.get('GPU', 0):g} GPU(s) + {n.get('CPU', 0):g} CPU(s)" for n in nodes) or "no nodes"
        raise UserError(
            f"the Ray cluster has room for no worker: each needs {need} on one node, the nodes have {sizes}",
            "lower runtime.ray.num_gpus / num_cpus (for a vLLM teacher: teacher.vllm.tensor_parallel_size x "
            "pipeline_parallel_size GPUs, over several nodes when no node has that many), or add nodes",
        )
    return max(1, min(spec.replicas or fits, fits, shards))


def node_resources(ray: Any) -> list[dict[str, float]]:
    """Each alive node's resources (CPU, GPU, ...), for `replica_count`."""
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


# passed to workers whenever the driver has them: Hub access and thread settings
FORWARDED_ALWAYS = ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "DISTILLERY_THREADS", "OMP_NUM_THREADS")


def worker_env(recipe: Recipe) -> dict[str, str]:
    """The environment variables workers get from the driver (Ray's `runtime_env`): those named in
    runtime.ray.env, the API key variables the recipe's teacher and judges read, and FORWARDED_ALWAYS,
    each only where the driver has it. Workers on other nodes start from their raylet's environment,
    so a key exported only in the driver's shell would otherwise be missing there."""
    names = [*recipe.runtime.ray.env, *FORWARDED_ALWAYS]
    names += [spec.openai.api_key_env for spec in _engine_specs(recipe) if spec.engine == "openai"]
    return {name: os.environ[name] for name in dict.fromkeys(names) if name in os.environ}


def worker_runtime_env(recipe: Recipe) -> dict[str, Any] | None:
    """Ray's `runtime_env` for the workers: `worker_env`'s variables. (The user's check modules travel
    as the curate workers' arguments instead: Ray takes local folders and files in `py_modules` only for
    a whole job, at `ray.init`, not for actors of a session that is already open.)"""
    variables = worker_env(recipe)
    return {"env_vars": variables} if variables else None


def _engine_specs(recipe: Recipe) -> list[Any]:
    """The teacher and every judge's model spec (what may call a server with a key)."""
    judges = [getattr(c, "model", None) for c in recipe.curate.checks]
    return [recipe.teacher, *(j for j in judges if j is not None and hasattr(j, "openai"))]


def loopback_warning(recipe: Recipe, nodes: int) -> str | None:
    """A server teacher at 127.0.0.1/localhost on a cluster of several nodes: each worker would call
    its own node, where no server may run."""
    from urllib.parse import urlparse

    if nodes < 2:
        return None
    for spec in _engine_specs(recipe):
        if spec.engine == "openai" and urlparse(spec.openai.base_url).hostname in ("127.0.0.1", "localhost", "::1"):
            return (
                f"{spec.openai.base_url} is a loopback address and the cluster has {nodes} nodes: each worker "
                "calls a server on its own node; give the server's address reachable from every node"
            )
    return None


def _resources_line(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU")) or "nothing"


class ShardTimeout(Exception):
    """A payload call that ran past runtime.ray.shard_timeout_s; handled as if its worker had died."""


class ActorPool:
    """Replicas of one worker class, each built once; payloads go to the least busy replica.

    The worker class is a `Worker` subclass with the method named in `map`; its args start with the
    driver's working folder and the recipe. Each replica gets up to `runtime.ray.shards_in_flight`
    payloads at once: with `concurrency` 1 (the default) Ray runs them one after the other, so the next
    payload starts the moment one ends instead of after the driver's round trip; a worker whose tool
    is thread-safe (a vLLM or server teacher) runs up to `concurrency` of them together. Ray restarts a
    killed replica (`max_restarts`); its payloads are sent again, and the one it was running when it
    died counts an attempt (at most `MAX_ATTEMPTS` in all).
    """

    def __init__(
        self,
        ray: Any,
        worker: type,
        args: tuple[Any, ...],
        replicas: int,
        num_cpus: float,
        num_gpus: float,
        spec: RaySpec,
        runtime_env: dict[str, Any] | None = None,
        concurrency: int = 1,
        bundles: list[dict[str, float]] | None = None,
    ) -> None:
        from ray.exceptions import GetTimeoutError, RayError

        self.ray = ray
        self.shard_timeout_s, self.start_timeout_s = spec.shard_timeout_s, spec.start_timeout_s
        self.depth, self.concurrency = spec.shards_in_flight, max(1, concurrency)
        options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "max_restarts": spec.max_restarts,
            "max_task_retries": 0,
            "max_concurrency": self.concurrency,
            "runtime_env": runtime_env,
        }
        remote = ray.remote(worker)
        self.groups: list[Any] = []  # one placement group per replica that spans nodes (`bundles`)
        if bundles:  # the worker in the first bundle, without a GPU; the engine's GPU workers fill the group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            self.groups = [ray.util.placement_group(bundles, strategy="PACK") for _ in range(replicas)]
            self.actors = [
                remote.options(
                    **options
                    | {
                        "num_gpus": 0,
                        "scheduling_strategy": PlacementGroupSchedulingStrategy(
                            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
                        ),
                    }
                ).remote(*args)
                for group in self.groups
            ]
            num_gpus = sum(b.get("GPU", 0) for b in bundles)
        else:
            self.actors = [remote.options(**options).remote(*args) for _ in range(replicas)]
        self.redone = 0  # payloads computed again: their worker died or hung while running them
        calls = [a.ready.remote() for a in self.actors]
        try:
            errors = ray.get(calls, timeout=spec.start_timeout_s)
        except GetTimeoutError:  # not placed (resources held elsewhere, autoscaling) or a load that hangs
            started, _ = ray.wait(calls, num_returns=len(calls), timeout=0)
            self.close()
            need = f"{num_cpus:g} CPU(s)" + (f" and {num_gpus:g} GPU(s)" if num_gpus else "")
            where = "in one placement group over several nodes" if bundles else "on one node"
            raise UserError(
                f"{len(calls) - len(started)} of {len(calls)} Ray workers were not ready after "
                f"{spec.start_timeout_s:g} s (runtime.ray.start_timeout_s): each needs {need} {where}; "
                f"available now: {_resources_line(ray.available_resources())}",
                "free those resources (another job may hold them), lower runtime.ray.replicas, or raise "
                "runtime.ray.start_timeout_s for a model that loads slowly",
            ) from None
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

        Results come as they finish, or with `ordered` in index order; then no payload more than
        `shards_in_flight + 1` per replica ahead of the next one due is sent, so few results wait in memory.
        A replica whose call failed because Ray is restarting it is probed with `ready` until it
        answers (calls to a restarting actor fail at once), and only then gets work again; one that
        is dead for good, or silent for runtime.ray.start_timeout_s (its model reloads), gets no more work.
        """
        from ray.exceptions import (
            ActorDiedError,
            ActorUnschedulableError,
            NodeDiedError,
            ObjectLostError,
            OutOfMemoryError,
            RayActorError,
            RayTaskError,
            RuntimeEnvSetupError,
            WorkerCrashedError,
        )

        # the worker (or its node) is gone or being restarted: the payload is sent again
        died = (RayActorError, ObjectLostError, OutOfMemoryError, NodeDiedError, WorkerCrashedError, ShardTimeout)
        pending = deque(range(count))
        deaths = [0] * count  # times a worker died (or hung) while running this payload
        running: set[int] = set()  # payloads charged for a death whose failed call is still to come
        self._flight: dict[Any, tuple[int, int, float]] = {}  # payload call -> (replica, index, when sent)
        probes: dict[Any, int] = {}  # `ready` call -> replica being restarted
        load = [0] * len(self.actors)  # payload calls in flight per replica
        self._last_done = [0.0] * len(self.actors)  # when each replica last returned a payload
        self._down: dict[int, float] = {}  # replica -> when a call to it first failed (being restarted)
        self._scanned = time.monotonic()  # when the deadlines were last checked
        done: dict[int, Any] = {}  # results waiting for their turn (ordered)
        due = 0  # the next index to hand on (ordered)
        window = (self.depth + 1) * len(self.actors)

        while pending or self._flight:
            while pending and (not ordered or pending[0] < due + window):
                free = [a for a in range(len(self.actors)) if a not in self._down and load[a] < self.depth]
                if not free:
                    break
                actor, i = min(free, key=load.__getitem__), pending.popleft()
                call = getattr(self.actors[actor], method).remote(payload(i))
                self._flight[call] = (actor, i, time.monotonic())
                load[actor] += 1
            if not self._flight and not probes:
                raise UserError(
                    f"every Ray worker is gone; {len(pending)} shard(s) were not done",
                    "see the worker logs (ray logs), then run the same command again: finished shards are kept",
                )
            ref, timed_out = self._next_done([*self._flight, *probes])
            if ref in probes:
                actor, i, sent = probes.pop(ref), None, 0.0
            else:
                actor, i, sent = self._flight.pop(ref)
                load[actor] -= 1
            what = describe(i) if i is not None else "a restarted Ray worker"
            try:
                if timed_out:
                    raise ShardTimeout(f"no result after {self.shard_timeout_s:g} s (runtime.ray.shard_timeout_s)")
                result = self.ray.get(ref)
            except (ActorUnschedulableError, RuntimeEnvSetupError) as exc:  # retrying cannot help
                raise UserError(
                    f"{what}: {type(exc).__name__}: {first_line(exc, 200)}",
                    "see the worker logs (ray logs); a runtime environment must install on every node, and a "
                    "worker needs a node with the CPUs and GPUs it asks for",
                ) from None
            except died as exc:
                if i is not None:
                    if actor not in self._down or isinstance(exc, ObjectLostError):
                        # the first failure seen of a replica charges the payload it was running: the one
                        # that timed out (or whose result was lost), else its oldest call (the others were
                        # waiting behind it)
                        lost = isinstance(exc, ObjectLostError)
                        charged = i if timed_out or lost else self._oldest(actor, sent, i)
                        running.add(charged)
                        deaths[charged] += 1
                        if deaths[charged] >= MAX_ATTEMPTS:
                            raise UserError(
                                f"{describe(charged)}: its Ray worker died {deaths[charged]} times "
                                f"({first_line(exc, 200)})",
                                "look for out-of-memory kills in the worker logs (ray logs), lower "
                                "generate.batch_size or generate.prompts_per_shard, then run the same command "
                                "again: finished shards are kept",
                            ) from None
                    if i in running or self.concurrency > 1:  # its work was lost, not only its place in line
                        running.discard(i)
                        self.redone += 1
                    pending.appendleft(i)
                if isinstance(exc, ObjectLostError):  # the result was lost (its node), not the worker
                    continue
                first = actor not in self._down
                self._down.setdefault(actor, time.monotonic())
                # a probe told "died" (not "restarting") means for good: restarts used up, node gone
                gone = i is None and isinstance(exc, ActorDiedError)
                recent = time.monotonic() - self._down[actor] < self.start_timeout_s
                if (first or i is None) and not gone and recent and (pending or self._flight):
                    if i is None or timed_out:  # Ray is restarting it, or the kill has yet to land
                        time.sleep(PROBE_S)
                    probes[self.actors[actor].ready.remote()] = actor
                continue
            except RayTaskError as exc:
                if isinstance(exc.cause, UserError):
                    raise exc.cause from None
                cause = exc.cause if exc.cause is not None else exc
                raise UserError(
                    f"{what}: its worker raised {type(cause).__name__}: {first_line(cause, 200)}",
                    "see the worker logs (ray logs); finished shards are kept, so the same command goes on "
                    "from here once that is fixed",
                ) from None
            if i is None:
                if result:  # the restarted replica's set-up failed
                    raise UserError(*result)
                self._down.pop(actor, None)
                continue
            self._last_done[actor] = time.monotonic()
            if not ordered:
                yield i, result
                continue
            done[i] = result
            while due in done:
                yield due, done.pop(due)
                due += 1

    def _oldest(self, actor: int, sent: float, i: int) -> int:
        """The payload a replica was running when a call to it failed: its oldest call in flight (the
        failed call, sent at `sent` with payload `i`, is no longer in the flight table)."""
        return min([(sent, i), *((t, j) for a, j, t in self._flight.values() if a == actor)])[1]

    def _next_done(self, calls: list[Any]) -> tuple[Any, bool]:
        """The next finished call, or (call, True) for a payload call running longer than
        runtime.ray.shard_timeout_s, whose worker is then killed for Ray to restart (a hung engine
        holds its GPUs, never answers). A replica that runs one call at a time runs its oldest; the
        clock of each other call starts when the one before it returned. Deadlines are checked about
        once a second, also while other replicas keep returning results; a replica already down
        (killed, restarting) is not timed again."""
        while True:
            ready, _ = self.ray.wait(calls, num_returns=1, timeout=1.0)
            now = time.monotonic()
            if now - self._scanned >= 1.0:
                self._scanned = now
                if late := self._past_deadline(now):
                    return late, True
            if ready:
                return ready[0], False

    def _past_deadline(self, now: float) -> Any:
        """A payload call past runtime.ray.shard_timeout_s (its worker is killed here), else None."""
        running: dict[Any, tuple[int, float]] = {}  # call -> (replica, when it started running)
        oldest: dict[int, tuple[float, Any]] = {}
        for call, (actor, _, sent) in self._flight.items():
            if actor in self._down:
                continue
            if self.concurrency > 1:
                running[call] = (actor, sent)
            elif actor not in oldest or sent < oldest[actor][0]:
                oldest[actor] = (sent, call)
        for actor, (sent, call) in oldest.items():
            running[call] = (actor, max(sent, self._last_done[actor]))
        for call, (actor, started) in running.items():
            if now - started > self.shard_timeout_s:
                self.ray.kill(self.actors[actor], no_restart=False)
                return call
        return None

    def close(self) -> None:
        """Stop the replicas (frees their models and GPU memory now, not when the session ends)."""
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        for group in self.groups:
            self.ray.util.remove_placement_group(group)

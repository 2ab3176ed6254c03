"""Independent states side by side on this machine: the ``local`` scheduler, and what ``auto`` (the
default) picks when a graph has independent trainings and the machine more than one core.

Why not dask's local cluster (``processes``): each of its worker processes imports torch, MLflow and
dask again (about 3.5 CPU s each), as much as a short study's trainings. Here one helper process
imports them once and forks the workers from itself (`zygote`). It is started as soon as the
executor knows what is missing, while this process still opens the store and checks the plan, so on
a machine with a free core its imports cost no wall time; the forked workers start with everything
loaded. The helper is a fresh interpreter (never a fork of this one): it holds no store connection,
no thread and nothing of the caller's ``__main__``, which is what makes forking it safe.

A task is the same JSON a dask worker gets; it travels over a socket pair, and its answer is JSON
too (a run id, a group's run ids, or an error's type and text). Nothing is pickled. One message is
a 4-byte big-endian length and UTF-8 JSON:

- to a worker: ``{"call": "reach" | "reach_batch", "args": [...]}`` (a task), ``{"stop": reason,
  "signal": n}`` (a stop request: the training in progress checkpoints and stops, as on SIGTERM);
  closing the socket ends the worker;
- from a worker: ``{"ok": result}``, ``{"error": {...}}`` or ``{"progress": line}``.

This process (`LocalWorkers.run`) hands ready tasks to idle workers, the task with the longest chain
of trainings still behind it first (so that three seeds' chains on two workers advance together and
finish together), reports each state as it is reached, and after a failure or a stop request starts
nothing new, lets the tasks in progress end, and raises the first error. States do not depend on
which worker computed them: each is computed from its parents' stored files with the run's fixed
thread count.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import weakref
from functools import partial
from pathlib import Path

from ..errors import SpecError

_HEADER = struct.Struct(">I")
TRAIN_COST = 20  # a training costs this many non-training states (the priority of a chain of tasks)


# ---- this process: the graph on the workers -------------------------------------------------------------


def send(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def receive(sock: socket.socket) -> dict | None:
    """The next message, or None when the other end closed."""
    head = _read(sock, _HEADER.size)
    if head is None:
        return None
    data = _read(sock, _HEADER.unpack(head)[0])
    return None if data is None else json.loads(data)


def _read(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class WorkerError(RuntimeError):
    """An error raised in a local worker process, with its type's name and the worker's traceback."""

    def __init__(self, type_name: str, message: str):
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")


def error_json(error: BaseException) -> dict:
    import traceback

    from ..training.interrupt import Interrupted

    return {
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "kind": "spec" if isinstance(error, SpecError) else "interrupted" if isinstance(error, Interrupted) else None,
        "message": str(error),
        "reason": getattr(error, "reason", None),
        "signal": getattr(error, "signum", None),
        "iteration": getattr(error, "iteration", None),
        "traceback": "".join(traceback.format_exception(error))[-20_000:],
    }


def error_from_json(found: dict) -> BaseException:
    """The exception a worker reported, as this process raises it (one-line errors stay one line)."""
    from ..training.interrupt import Interrupted

    if found["kind"] == "spec":  # SpecError and its kinds (a diverged training): one line, as in this process
        return SpecError(found["message"])
    if found["kind"] == "interrupted":
        return Interrupted(found["reason"] or "stop requested", signum=found["signal"], iteration=found["iteration"])
    error = WorkerError(found["type"], found["message"])
    error.add_note(f"in a local worker process:\n{found['traceback']}")
    return error


def _result_from_json(value):
    """A task's answer: a run id, or a group's list of run ids and errors (`task.reach_batch`)."""
    if isinstance(value, list):
        return [error_from_json(v["error"]) if isinstance(v, dict) else v for v in value]
    return value


class LocalWorkers:
    """`count` worker processes forked from one helper process that imported `preload` (started at once)."""

    def __init__(self, count: int, preload: list[str]):
        self.count = count
        mine, theirs = zip(*(socket.socketpair() for _ in range(count)))
        self.sockets = list(mine)
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # states side by side share the cores: threads never spin
        # the helper imports mlprune as this process does (the caller's sys.path, this mlprune first)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), *filter(None, sys.path)])
        config = {"fds": [s.fileno() for s in theirs], "preload": preload}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlprune.executor.local", json.dumps(config)],
            pass_fds=[s.fileno() for s in theirs],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        for sock in theirs:
            sock.close()
        self.used = [False]  # whether a task was sent (else closing does not wait for the helper's imports)
        self._finalizer = weakref.finalize(self, _close, self.sockets, self.process, self.used)

    def close(self) -> None:
        self._finalizer()

    def run(self, graph: dict, calls: dict, on_result, progress=None) -> dict:
        """Run `graph` ({key: (function, *args)}, args naming other keys are their results) on the workers.

        `calls`: {function: name} of the functions workers run (`worker_calls`); any other function runs
        here, on its arguments' results (a batch member's pick). on_result(key, value) as each is reached.
        """
        return _Schedule(self, graph, calls, on_result, progress).run()


def _close(sockets, process, used) -> None:
    for sock in sockets:
        sock.close()
    if not used[0]:  # never used (a check failed, nothing to compute): its workers have no state to finish
        process.kill()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Schedule:
    """One graph on the workers (`LocalWorkers.run`)."""

    def __init__(self, workers: LocalWorkers, graph: dict, calls: dict, on_result, progress):
        self.workers, self.graph, self.calls = workers, graph, calls
        self.on_result, self.progress = on_result, progress
        self.deps, self.dependents = dependencies(graph)
        self.priority = _chain_priority(graph, calls)
        self.results: dict = {}
        self.waiting = {k: set(d) for k, d in self.deps.items()}
        self.ready = [k for k, d in self.waiting.items() if not d]
        self.busy: dict[int, str] = {}  # worker index -> key
        self.dead: set[int] = set()  # workers whose process ended
        self.errors: list[BaseException] = []
        self.stopping: tuple[str, int | None] | None = None

    def run(self) -> dict:
        from ..training.interrupt import install_signal_handlers, interrupted, stop_requested

        self.selector = selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.workers.sockets):
            selector.register(sock, selectors.EVENT_READ, index)
        # Ctrl-C: a stop request passed on to the workers (their trainings checkpoint, as on SIGTERM), never
        # a KeyboardInterrupt between a worker's answer and its bookkeeping
        interrupt = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
        install_signal_handlers((signal.SIGINT,))
        try:
            while self.ready or self.busy:
                if stop_requested() and self.stopping is None:
                    self._stop(stop_requested())
                self._dispatch()
                if not self.busy:
                    break
                for selected, _ in selector.select(timeout=0.2):
                    self._answer(selected.data)
        finally:
            selector.close()
            if interrupt is not None:
                signal.signal(signal.SIGINT, interrupt)
        if self.errors:
            raise self.errors[0]
        if stop_requested():
            raise interrupted()
        return self.results

    def _dispatch(self) -> None:
        while self.ready and not self.errors and self.stopping is None:
            self.ready.sort(key=lambda k: self.priority[k])
            key = self.ready[0]
            function, *args = self.graph[key]
            values = [self.results[a] if isinstance(a, str) and a in self.deps[key] else a for a in args]
            if function not in self.calls:  # here: a pick out of a group's results
                self.ready.pop(0)
                self._done(key, partial(function, *values))
                continue
            idle = [i for i in range(self.workers.count) if i not in self.busy and i not in self.dead]
            if not idle:
                if len(self.dead) == self.workers.count:
                    status = self.workers.process.poll()
                    self.errors.append(
                        RuntimeError(
                            f"every local worker process ended (their helper process: "
                            f"{'running' if status is None else f'exit status {status}'}); see the errors above"
                        )
                    )
                return
            self.workers.used[0] = True
            try:
                send(self.workers.sockets[idle[0]], {"call": self.calls[function], "args": values})
            except OSError:  # that worker is gone: the next one takes the task
                self.dead.add(idle[0])
                self.selector.unregister(self.workers.sockets[idle[0]])
                continue
            self.ready.pop(0)
            self.busy[idle[0]] = key

    def _answer(self, index: int) -> None:
        message = receive(self.workers.sockets[index])
        key = self.busy.get(index)
        if message is None:
            self.dead.add(index)
            self.selector.unregister(self.workers.sockets[index])
            self.busy.pop(index, None)
            if key is not None:
                self.errors.append(RuntimeError(f"local worker process {index + 1} ended while computing {key[:12]}"))
            return
        if "progress" in message:
            if self.progress:
                self.progress(message["progress"])
            return
        self.busy.pop(index, None)
        if "error" in message:
            self.errors.append(error_from_json(message["error"]))
            return
        self._done(key, partial(_result_from_json, message["ok"]))

    def _done(self, key: str, value) -> None:
        try:
            self.results[key] = value()
        except Exception as error:  # noqa: BLE001 - a batch member's own error: raised after the others end
            self.errors.append(error)
            return
        self.on_result(key, self.results[key])
        for dependent in self.dependents[key]:
            self.waiting[dependent].discard(key)
            if not self.waiting[dependent]:
                self.ready.append(dependent)

    def _stop(self, reason: str) -> None:
        from ..training.interrupt import stop_signal

        self.stopping = (reason, stop_signal())
        for index in self.busy:
            try:
                send(self.workers.sockets[index], {"stop": reason, "signal": stop_signal()})
            except OSError:  # gone already: `_answer` reports it
                pass


def dependencies(graph: dict) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({key: the keys it waits for}, {key: the keys waiting for it}) of a graph ({key: (function, *args)},
    an argument that is a key of the graph is that task's result)."""
    deps = {k: [a for a in task[1:] if isinstance(a, str) and a in graph] for k, task in graph.items()}
    dependents: dict[str, list[str]] = {k: [] for k in graph}
    for key, waits_for in deps.items():
        for dep in waits_for:
            dependents[dep].append(key)
    return deps, dependents


def _chain_priority(graph: dict, calls: dict) -> dict[str, tuple]:
    """Per key a sort key: the longest chain of work behind it first (a training counts TRAIN_COST, a group
    of them too), then graph order."""
    deps, dependents = dependencies(graph)
    behind: dict[str, int] = {}
    for key in reversed(list(_topological(graph, deps))):
        cost = _cost(graph[key], calls)
        behind[key] = cost + max((behind[d] for d in dependents[key]), default=0)
    return {key: (-behind[key], position) for position, key in enumerate(graph)}


def _cost(task: tuple, calls: dict) -> int:
    name = calls.get(task[0])
    if name == "reach_batch":
        return TRAIN_COST
    if name == "reach":
        from ..spec.steps import kind_of

        steps = json.loads(task[1])["node"]["steps"]
        return TRAIN_COST if any(kind_of(step)[0].trains for step in steps) else 1
    return 0


def _topological(graph: dict, deps: dict) -> list[str]:
    order, seen = [], set()
    for start in graph:
        stack = [(start, False)]
        while stack:
            key, expanded = stack.pop()
            if expanded:
                order.append(key)
                continue
            if key in seen:
                continue
            seen.add(key)
            stack.append((key, True))
            stack.extend((d, False) for d in deps[key] if d not in seen)
    return order


def training_width(graph: dict, calls: dict) -> int:
    """How many trainings (or groups of them) of a graph can run at once, at most: the largest number at
    one depth (the longest path of dependencies from a task without any)."""
    deps, _ = dependencies(graph)
    depth: dict[str, int] = {}
    for key in _topological(graph, deps):
        depth[key] = 1 + max((depth[d] for d in deps[key]), default=-1)
    counts: dict[int, int] = {}
    for key, task in graph.items():
        if _cost(task, calls) >= TRAIN_COST:
            counts[depth[key]] = counts.get(depth[key], 0) + 1
    return max(counts.values(), default=0)


def preload_modules(roots) -> list[str]:
    """What the helper imports before it forks the workers: what computing a state imports, torchvision
    where a root's dataset or model needs it (`roots`: the resolved root specs of the states to compute),
    and the modules of plugins registered in this process."""
    from ..names import ENV_PLUGIN_MODULES

    vision = ["torchvision"] if any(_needs_torchvision(root) for root in roots) else []
    plugins = [m for m in os.environ.get(ENV_PLUGIN_MODULES, "").split(",") if m]
    return [*PRELOAD, *vision, *plugins]


def _needs_torchvision(root: dict | None) -> bool:
    """Whether a state of this root imports torchvision (its dataset's reader or its model); unknown: yes."""
    from ..data.catalog import DATASETS
    from ..models.catalog import model_entry

    try:
        return DATASETS[root["dataset"]].torchvision or model_entry(root["model"], check_torchvision=False).torchvision
    except (KeyError, TypeError, SpecError):
        return True


PRELOAD = [  # measured: what a worker's first state imports (a tracking store, a dataset, a network)
    "torch",
    "torch._dynamo",  # building any torch optimizer imports it (1 s: torchvision used to bring it in)
    "safetensors.torch",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "sqlalchemy.dialects.sqlite",
    "alembic.config",
    "mlprune.executor.task",
    "mlprune.executor.resume",
    "mlprune.store",
    "mlprune.store.checkpoints",
    "mlprune.runners",
    "mlprune.runners.network",
    "mlprune.training.loop",
    "mlprune.training.checkpoint",
    "mlprune.data.loading",
    "mlprune.models.nets",
    "mlprune.pruning.prune_step",
    "mlprune.workspace",
]


# ---- the helper process and its workers ----------------------------------------------------------------


def worker_calls() -> dict:
    """{name: function} a worker runs (no other code is reachable from a message)."""
    from .task import reach, reach_batch

    return {"reach": reach, "reach_batch": reach_batch}


def call_names() -> dict:
    """{function: name} of `worker_calls`: what a graph's task sends a worker."""
    return {function: name for name, function in worker_calls().items()}


def zygote(config: dict) -> None:
    """Import `preload`, fork one worker per socket, wait for them."""
    import importlib

    from .threads import collector_paused

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinating process turns a Ctrl-C into stop messages
    with collector_paused():  # (measured here: 4.0 s -> 3.0 s)
        for name in config["preload"]:
            importlib.import_module(name)
        gc.freeze()  # the workers' collections never scan what was imported (nor write to its shared pages)
    children = []
    for fd in config["fds"]:
        pid = os.fork()
        if pid == 0:
            for other in config["fds"]:
                if other != fd:
                    os.close(other)
            code = 0
            try:
                serve(socket.socket(fileno=fd))
            except BaseException:  # noqa: BLE001 - a worker that cannot go on says so and ends
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # no interpreter teardown: everything was written or sent
        children.append(pid)
    for fd in config["fds"]:
        os.close(fd)
    for pid in children:
        os.waitpid(pid, 0)
    os._exit(0)  # no teardown of what it imported (a second): the caller waits for this process to end


def serve(sock: socket.socket) -> None:
    """A worker: run the tasks that arrive, answer each; a stop message stops the training in progress."""
    import queue

    from ..training.interrupt import install_signal_handlers, request_stop
    from .task import PROGRESS

    install_signal_handlers()
    calls = worker_calls()
    tasks: queue.Queue = queue.Queue()
    lock = threading.Lock()

    def listen():
        while True:
            message = receive(sock)
            if message is None:
                request_stop("the coordinating process ended")
                tasks.put(None)
                return
            if "stop" in message:
                request_stop(message["stop"], message.get("signal"))
            else:
                tasks.put(message)

    def answer(message: dict) -> None:
        with lock:
            try:
                send(sock, message)
            except OSError:  # the coordinating process is gone (its stop reached the training already)
                pass

    threading.Thread(target=listen, name="mlprune-local-listen", daemon=True).start()
    PROGRESS.printer = lambda line: answer({"progress": line})
    while (message := tasks.get()) is not None:
        try:
            result = calls[message["call"]](*message["args"])
        except BaseException as error:  # noqa: BLE001 - every error is the caller's to raise
            answer({"error": error_json(error)})
            continue
        if isinstance(result, list):
            result = [{"error": error_json(r)} if isinstance(r, BaseException) else r for r in result]
        answer({"ok": result})


if __name__ == "__main__":
    zygote(json.loads(sys.argv[1]))

"""Claims: two processes that need the same state never both compute it.

A state is computed under a RUNNING run carrying its key (its *claim*), with a
heartbeat tag and the claiming host/pid. The oldest live claim (start time, then
run id) wins; a loser marks its run KILLED and polls until the key is FINISHED
(reused) or the claim is dead: no heartbeat for ``MLPRUNE_CLAIM_TIMEOUT`` s
(default 60), or its pid gone on this host. A dead claim is marked FAILED and
claimed anew. A thread heartbeats while computing and notices a lost claim
(`ClaimLost`: the compute is abandoned and the winner awaited). `settle` checks
right before and right after a run is set FINISHED, so one key never keeps two
FINISHED runs (the first to finish stays).

Fast paths: the check before FINISHED is skipped while our last heartbeat is
younger than half the timeout (no one can have taken the claim over); the look-up
after `create()` and the check after FINISHED search for *other* runs only (a
search that matches nothing is the cheapest); a child of a state this process has
just computed is claimed without the look-up before `create()`.
"""

from __future__ import annotations

import math
import os
import threading
import time

from ..names import ENV_CLAIM_TIMEOUT, TAG_CLAIM_HOST, TAG_CLAIM_PID, TAG_ERROR, TAG_HEARTBEAT, TAG_WORKFLOW
from ..spec.limits import env_number
from ..training.interrupt import interrupted, stop_requested

DEFAULT_CLAIM_TIMEOUT_S = 60.0


class ClaimLost(RuntimeError):
    """Our RUNNING claim on a key was taken over (we looked dead) or an older live claim exists."""


def claim_timeout() -> float:
    """Seconds without a heartbeat after which a RUNNING claim counts as dead (MLPRUNE_CLAIM_TIMEOUT)."""
    return env_number(
        ENV_CLAIM_TIMEOUT, DEFAULT_CLAIM_TIMEOUT_S, lambda value: 0 < value < math.inf, "a number of seconds > 0"
    )


def process_host() -> str:
    """This host and pid namespace: a claim's pid means something only where both match."""
    import socket

    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def claim_tags() -> dict[str, str]:
    """The tags a new claim carries: first heartbeat, host and pid."""
    return {TAG_HEARTBEAT: str(time.time()), TAG_CLAIM_HOST: process_host(), TAG_CLAIM_PID: str(os.getpid())}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    try:  # a killed child nobody has reaped yet is a zombie: dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _claim_order(run) -> tuple:
    return (run.info.start_time or 0, run.info.run_id)


def stale_reason(run, timeout: float, now: float) -> str | None:
    """Why a RUNNING claim is dead (no heartbeat for `timeout` s, or its process is gone), else None."""
    tags = run.data.tags
    try:
        beat = float(tags[TAG_HEARTBEAT])
    except (KeyError, ValueError):
        beat = (run.info.start_time or 0) / 1000
    if now - beat > timeout:
        return f"no heartbeat for {now - beat:.0f} s (timeout {timeout:g} s)"
    return process_gone(tags)


def process_gone(tags: dict) -> str | None:
    """Why the process a run's host/pid tags name is known to be dead (it ran on this host and its pid
    is gone), else None: a process elsewhere, or alive, or a run without those tags."""
    pid = tags.get(TAG_CLAIM_PID, "")
    if (
        tags.get(TAG_CLAIM_HOST) == process_host()
        and pid.isdigit()
        and int(pid) != os.getpid()
        and not _pid_alive(int(pid))
    ):
        return f"its process {pid} on this host is gone"
    return None


class KeepAlive:
    """Heartbeats a claim from a thread while it is computed, and notices when it is lost.

    Every `interval` s: if our run is no longer RUNNING (someone took it over) or an
    older live claim on the same key exists, the claim is marked lost; the next
    `Claims.heartbeat` (once per epoch) and `Claims.settle` then raise ClaimLost.
    """

    def __init__(self, claims: Claims, run_id: str, key: str, timeout: float):
        self.claims, self.run_id, self.key, self.timeout = claims, run_id, key, timeout
        self.interval = max(0.2, min(10.0, timeout / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mlprune-heartbeat-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _loop(self):
        store = self.claims.store
        while not self._stop.wait(self.interval):
            try:
                run = store.run(self.run_id)
                if run.info.status != "RUNNING":
                    self.claims.lost[self.run_id] = f"claim taken over while computing (run is {run.info.status})"
                    return
                self.claims.heartbeat(self.run_id, force=True)
                live = self.claims.live_claims(self.key, self.timeout)
                if live and live[0].info.run_id != self.run_id:
                    self.claims.lost[self.run_id] = f"lost claim to older claim {live[0].info.run_id}"
                    return
            except ClaimLost:
                return
            except Exception:  # a store hiccup must not stop the computation: staleness decides
                continue

    def stop(self):
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


class Claims:
    """The claim protocol on one `Store`."""

    # A heartbeat is a store write (~10 ms on sqlite): at most one per this many seconds per run,
    # far below any staleness timeout; create() writes the first one.
    heartbeat_interval_s = 10.0

    def __init__(self, store):
        self.store = store
        self.lost: dict[str, str] = {}  # run id -> why our claim on it was lost (see KeepAlive)
        self.beats: dict[str, float] = {}  # run id -> time of the last heartbeat written
        self.computed: set[str] = set()  # states this process computed and finished
        self.claimed: set[str] = set()  # keys this process has claimed (it may hold their state)
        self.others: dict[str, list] = {}  # our newest claim's run id -> the key's unfinished runs seen then

    # ---- searching ---------------------------------------------------------------------------
    def find_claims(self, key: str) -> list:
        """RUNNING runs holding a claim on this key, oldest first."""
        return self.store.search_key(key, status="RUNNING", max_results=50)

    def lookup(self, key: str, timeout: float, exclude: str | None = None) -> tuple[str | None, list]:
        """(the key's valid FINISHED state or None, its live claims oldest first): one search, one snapshot.

        `exclude`: a run id to leave out (our own claim: a search that matches no run is cheapest).
        """
        runs = self.store.search_key(key, exclude=exclude)
        if exclude:  # what our new claim may resume from (`store.checkpoints`), with no search of its own;
            # one entry: the claim being computed next (another thread's overwrite costs a search, no more)
            self.others = {exclude: [r for r in runs if r.info.status != "FINISHED"]}
        finished = self.store.valid_finished([r for r in runs if r.info.status == "FINISHED"])
        if finished:
            return finished[0].info.run_id, []
        return None, self.live_claims(key, timeout, [r for r in runs if r.info.status == "RUNNING"])

    def live_claims(self, key: str, timeout: float, claims: list | None = None) -> list:
        """Live RUNNING claims on `key`, oldest first; dead ones are marked FAILED on the way."""
        live, now = [], time.time()
        for run in self.find_claims(key) if claims is None else claims:
            reason = stale_reason(run, timeout, now)
            if reason is None:
                live.append(run)
            else:
                self.store.fail(run.info.run_id, f"stale claim taken over: {reason}")
                workflow = run.data.tags.get(TAG_WORKFLOW)
                if workflow:  # the process that ran it is gone: its workflow run would stay RUNNING forever
                    self.fail_running(workflow, f"its state run {run.info.run_id} was taken over: {reason}")
        return sorted(live, key=_claim_order)

    def fail_running(self, run_id: str, reason: str) -> None:
        """Mark a run FAILED with `reason` if it is still RUNNING (a workflow run whose process died)."""
        try:
            if self.store.run(run_id).info.status != "RUNNING":
                return
        except Exception:  # noqa: BLE001 - gone, or in another store: nothing to mark
            return
        self.store.fail(run_id, reason)

    # ---- claiming ------------------------------------------------------------------------------
    def claim(
        self, key: str, create, *, timeout: float | None = None, progress=None, parent_run_id: str | None = None
    ) -> tuple[str, bool]:
        """Claim `key` before computing its state: (run id, True) if we hold the claim, a new RUNNING
        run made by `create()`; (run id, False) for the FINISHED state another process computed.

        `parent_run_id`: a state this process has just computed is almost never another's parent
        yet, so its child is claimed at once, without the look-up before `create()` (unless this
        process claimed the key before); the look-up after it still finds a finished state or an
        older claim (ours is then KILLED).
        """
        timeout = claim_timeout() if timeout is None else timeout
        delay, told = 0.1, None
        # the shortcut holds only for a key this process has not met before: two trainings in one
        # process that store the same checkpoint (a sweep over epochs) would otherwise race themselves
        fresh_parent = parent_run_id is not None and parent_run_id in self.computed and key not in self.claimed
        self.claimed.add(key)
        while True:
            found, live = (None, []) if fresh_parent else self.lookup(key, timeout)
            fresh_parent = False
            if found:
                return found, False
            if not live:
                run_id = create()
                self.beats[run_id] = time.monotonic()
                found, live = self.lookup(key, timeout, exclude=run_id)
                if not found and not live:  # the usual case: nobody else finished or claimed it meanwhile
                    return run_id, True
                found, live = self.lookup(key, timeout)  # finished or claimed by someone meanwhile?
                holder = found or (live[0].info.run_id if live else run_id)
                if holder == run_id:
                    return run_id, True
                self.release(run_id, f"state finished meanwhile by {found}" if found else f"lost claim to {holder}")
                if found:
                    return found, False
            else:
                holder = live[0].info.run_id
            if progress is not None and told != holder:
                progress(f"waiting for run {holder}: another process holds the claim on this state")
                told = holder
            if stop_requested():  # a process asked to stop does not wait for other processes' states
                raise interrupted()
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0, timeout / 4)

    def keep_alive(self, run_id: str, key: str, timeout: float | None = None) -> KeepAlive:
        """Start heartbeating a claim from a thread (call .stop() when done)."""
        return KeepAlive(self, run_id, key, claim_timeout() if timeout is None else timeout)

    def heartbeat(self, run_id: str, force: bool = False) -> None:
        """Tell other processes our claim is alive; raise ClaimLost if it was lost meanwhile."""
        if run_id in self.lost:
            raise ClaimLost(self.lost[run_id])
        now = time.monotonic()
        if not force and now - self.beats.get(run_id, float("-inf")) < self.heartbeat_interval_s:
            return
        self.store.client.set_tag(run_id, TAG_HEARTBEAT, str(time.time()))
        self.beats[run_id] = now

    def release(self, run_id: str, reason: str) -> None:
        """Mark our run KILLED (a lost claim, a duplicate) if it is still RUNNING or FINISHED."""
        import mlflow
        from mlflow.entities import RunStatus

        self.lost.pop(run_id, None)
        self.beats.pop(run_id, None)
        try:
            run = self.store.client.get_run(run_id)
            self.store.client.set_tag(run_id, TAG_ERROR, reason[:4000])
            if run.info.status in ("RUNNING", "FINISHED"):
                self.store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        except mlflow.exceptions.MlflowException:
            pass

    def _fresh(self, run_id: str) -> bool:
        """Did we write our claim's heartbeat less than half the claim timeout ago?"""
        return time.monotonic() - self.beats.get(run_id, float("-inf")) < claim_timeout() / 2

    def settle(self, run_id: str, key: str | None, before: bool) -> str:
        """The run that is the FINISHED state of `key`: ours, or one that finished first.

        Called right before (before=True) and right after we set our run FINISHED; if another
        run won, ours is marked KILLED. The first to finish (end time, then start time, then
        run id) is the state, so at most one FINISHED run per key survives a race.
        """
        if run_id in self.lost:
            raise ClaimLost(self.lost.pop(run_id))
        if not key:
            return run_id
        if before and self._fresh(run_id):
            # our last heartbeat is younger than half the claim timeout: no process can have taken
            # our claim over, nor finished the key (it would have waited for us); the check after
            # FINISHED below still settles any race
            return run_id
        if not before and not self.store.search_key(key, status="FINISHED", exclude=run_id, max_results=1):
            return run_id  # the usual case, in a search that matches no run: nobody else finished it
        runs = self.store.search_key(key)
        if before and any(r.info.run_id == run_id and r.info.status != "RUNNING" for r in runs):
            raise ClaimLost("claim taken over while computing (our run is no longer RUNNING)")
        finished = [r for r in runs if r.info.status == "FINISHED"]
        others = [r for r in finished if r.info.run_id != run_id]
        if not others:
            return run_id
        if not before:
            ours = [r for r in finished if r.info.run_id == run_id]
            first = min(finished, key=lambda r: (r.info.end_time or 0, *_claim_order(r)))
            if ours and first.info.run_id == run_id:
                return run_id
        winner = min(others, key=lambda r: (r.info.end_time or 0, *_claim_order(r))).info.run_id
        self.release(run_id, f"duplicate: state {key} was finished first by run {winner}")
        return winner

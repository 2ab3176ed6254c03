"""Reading a local MLflow sqlite store without MLflow: the look-ups that decide what exists.

MLflow's client reads through its SQLAlchemy store: importing it costs about what
``import mlflow`` costs again (SQLAlchemy's ORM, alembic, the table models: 1.5 s),
each search 5-20 ms of ORM work, and a search that returns every state of an
experiment builds an entity per run, per tag, per metric (seconds at 10,000 states).
A cached re-run, `mlprune tree` and the look-ups of the claim protocol only *read*:
`SqliteView` answers them from the same database file with the standard library's
``sqlite3``, in single SQL queries (one per look-up, however many keys).

- Reads only. Every write (runs, tags, params, metrics, status) goes through MLflow.
- The tables read are MLflow's own (``experiments``, ``runs``, ``tags``, ``params``,
  ``latest_metrics``, ``metrics``: unchanged since MLflow 1.x); a database without them, another
  schema, or MLflow's multi-workspace mode means no view (`open` returns None) and
  the caller goes through MLflow. ``MLPRUNE_SQLITE_READS=0`` turns the view off.
- The runs it returns (`RunView`) have the shape of MLflow's ``Run`` that mlprune
  reads: ``info`` (run_id, experiment_id, status, start/end time, artifact_uri,
  run_name, lifecycle_stage) and ``data`` (tags, params, latest metrics).
- Each query is its own read transaction on a connection of the calling thread: it
  sees every commit made before it, MLflow's included (WAL or rollback journal).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..names import ENV_SQLITE_READS, ENV_SQLITE_TIMEOUT, TAG_INVALID, TAG_KEY
from ..spec.limits import env_number
from .experiments import read_only, sqlite_path

# the columns read, per table: a database that lacks one is read through MLflow
_COLUMNS = {
    "experiments": {"experiment_id", "name", "artifact_location", "lifecycle_stage"},
    "runs": {
        "run_uuid",
        "name",
        "status",
        "start_time",
        "end_time",
        "artifact_uri",
        "lifecycle_stage",
        "experiment_id",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "step", "timestamp", "is_nan", "run_uuid"},
    "metrics": {"key", "value", "step", "is_nan", "run_uuid"},
}
BUSY_TIMEOUT_S = 30.0  # how long a read waits for another connection's write lock (MLflow's writes take ms)
MAX_BUSY_TIMEOUT_S = 3600.0
assert TAG_KEY.replace(".", "").isalnum()  # written into SQL as a literal (see search)
_CHUNK = 500  # host parameters per IN list (sqlite's limit is 999 in old builds)


def busy_timeout() -> float:
    """Seconds a read waits for a locked store: MLPRUNE_SQLITE_TIMEOUT (checked), else BUSY_TIMEOUT_S."""
    return env_number(
        ENV_SQLITE_TIMEOUT,
        BUSY_TIMEOUT_S,
        lambda value: 0 < value <= MAX_BUSY_TIMEOUT_S,
        f"a number of seconds > 0 and <= {MAX_BUSY_TIMEOUT_S:.0f}",
    )


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    run_name: str | None
    lifecycle_stage: str

    @property
    def run_uuid(self) -> str:
        return self.run_id


@dataclass(frozen=True)
class RunData:
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunView:
    """A run as MLflow's ``Run`` shows it to mlprune (read from the database, not through MLflow)."""

    info: RunInfo
    data: RunData


@dataclass(frozen=True)
class ExperimentView:
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str


def enabled() -> bool:
    return os.environ.get(ENV_SQLITE_READS, "1").strip() != "0"


@dataclass(frozen=True)
class RunFilter:
    """Which runs `SqliteView.search` returns: `key`: runs tagged with this state key; `keys`: with any of
    these; `states_only`: runs with a key tag; `status`: runs in this status; `exclude`: leave this run
    out; `run_ids` / `prefix`: only these runs / run ids starting so; `tags`: runs with these tag values;
    `active_only=False`: deleted runs too."""

    key: str | None = None
    keys: list | None = None
    states_only: bool = False
    status: str | None = None
    exclude: str | None = None
    run_ids: list | None = None
    prefix: str | None = None
    tags: dict | None = None
    active_only: bool = True


def _conditions(experiment_ids, f: RunFilter) -> tuple[list[str], list]:
    """The SQL conditions (on runs ``r``) and their arguments of a search, but its `keys` / `run_ids`."""
    where = ["r.lifecycle_stage = 'active'"] if f.active_only else ["1 = 1"]
    args: list = []
    if experiment_ids is not None:
        ids = [int(e) for e in experiment_ids]
        where.append(f"r.experiment_id IN ({', '.join('?' * len(ids))})")
        args += ids
    if f.key is not None:  # the key tag as a literal: sqlite then reads store.experiments.KEY_INDEX
        where.append(f"r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = '{TAG_KEY}' AND value = ?)")
        args.append(f.key)
    elif f.states_only:
        where.append("r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value != '')")
        args.append(TAG_KEY)
    for name, value in (f.tags or {}).items():
        where.append("r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)")
        args += [name, value]
    for condition, value in (("r.status = ?", f.status), ("r.run_uuid != ?", f.exclude)):
        if value is not None:
            where.append(condition)
            args.append(value)
    if f.prefix is not None:
        where.append("r.run_uuid LIKE ?")
        args.append(f.prefix.replace("%", "").replace("_", "") + "%")
    return where, args


class SqliteView:
    """Read-only queries on the MLflow sqlite database at `path` (see the module docs)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()

    @classmethod
    def open(cls, uri: str) -> SqliteView | None:
        """The view of a sqlite tracking URI whose database exists with MLflow's tables; else None."""
        if not enabled():
            return None
        path = sqlite_path(uri)
        if path is None or not path.is_file() or path.stat().st_size == 0:
            return None
        if os.environ.get("MLFLOW_WORKSPACE") or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in (
            "1",
            "true",
            "yes",
        ):
            return None
        view = cls(path)
        try:
            if not view._schema_known():
                return None
        except sqlite3.OperationalError as error:
            if "locked" in str(error).lower():  # held for the whole busy timeout: MLflow would wait as long again
                raise SpecError(
                    f"the tracking store {path} is locked by another process (waited {busy_timeout():g} s): {error}"
                ) from None
            return None
        except sqlite3.Error:
            return None
        return view

    # ---- plumbing ------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # autocommit: every statement is its own read transaction (it sees every earlier commit)
            if read_only(self.path):  # nobody can write it: read it without a lock (immutable) unless a WAL
                # file holds commits the database file does not (sqlite reads it through the existing -shm then)
                wal = Path(f"{self.path}-wal")
                mode = "ro" if wal.exists() and wal.stat().st_size else "ro&immutable=1"
                connection = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode={mode}",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                connection = sqlite3.connect(
                    str(self.path), timeout=busy_timeout(), isolation_level=None, check_same_thread=False
                )
            connection.execute("PRAGMA query_only = 1")
            self._local.connection = connection
        return connection

    def _query(self, sql: str, args=()) -> list[tuple]:
        return self._connection().execute(sql, tuple(args)).fetchall()

    def _schema_known(self) -> bool:
        for table, columns in _COLUMNS.items():
            found = {row[1] for row in self._query(f"PRAGMA table_info({table})")}
            if not columns <= found:
                return False
        workspace = {row[1] for row in self._query("PRAGMA table_info(experiments)")}
        if "workspace" in workspace and self._query("SELECT 1 FROM experiments WHERE workspace != 'default' LIMIT 1"):
            return False  # experiments of several workspaces: which one is MLflow's to say
        return True

    # ---- experiments -----------------------------------------------------------------------
    def experiment(self, *, name: str | None = None, experiment_id: str | None = None) -> ExperimentView | None:
        """The experiment (active or deleted) by name or id, or None."""
        if name is not None:
            rows = self._query(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments WHERE name = ?",
                (name,),
            )
        else:
            if not str(experiment_id).isdigit():
                return None
            rows = self._query(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments "
                "WHERE experiment_id = ?",
                (int(experiment_id),),
            )
        if len(rows) != 1:
            return None
        eid, ename, location, stage = rows[0]
        return ExperimentView(str(eid), ename, location, stage)

    def experiments(self) -> list[ExperimentView]:
        """The active experiments, by id."""
        rows = self._query(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments "
            "WHERE lifecycle_stage = 'active' ORDER BY experiment_id"
        )
        return [ExperimentView(str(e), n, a, s) for e, n, a, s in rows]

    # ---- runs --------------------------------------------------------------------------------
    def search(self, experiment_ids, *, limit: int | None = None, data: bool = True, **filters) -> list[RunView]:
        """Active runs of the experiments, oldest first (start time, then run id), as MLflow's
        ``search_runs(order_by=["attributes.start_time ASC"])`` gives them (`experiment_ids` None:
        any experiment), the first `limit`; `filters`: the fields of `RunFilter`. `data=False`: tags
        only (no params, no metrics).
        """
        where, args = _conditions(experiment_ids, RunFilter(**filters))
        keys, run_ids = filters.get("keys"), filters.get("run_ids")
        if keys is not None or run_ids is not None:
            values = list(dict.fromkeys(keys if keys is not None else run_ids))
            out: list[RunView] = []
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                holes = ", ".join("?" * len(chunk))
                extra = (
                    f"r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = '{TAG_KEY}' AND value IN ({holes}))"
                    if keys is not None
                    else f"r.run_uuid IN ({holes})"
                )
                out += self._runs(" AND ".join([*where, extra]), [*args, *chunk], None, data)
            out.sort(key=lambda run: (run.info.start_time is not None, run.info.start_time or 0, run.info.run_id))
            return out[:limit] if limit is not None else out
        return self._runs(" AND ".join(where), args, limit, data)

    def _runs(self, where: str, args: list, limit: int | None, data: bool) -> list[RunView]:
        order = " ORDER BY r.start_time ASC, r.run_uuid ASC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        rows = self._query(
            "SELECT r.run_uuid, r.experiment_id, r.status, r.start_time, r.end_time, r.artifact_uri, "
            f"r.name, r.lifecycle_stage FROM runs r WHERE {where}{order}",
            args,
        )
        if not rows:
            return []
        tags: dict[str, dict] = {row[0]: {} for row in rows}
        params: dict[str, dict] = {row[0]: {} for row in rows}
        metrics: dict[str, dict] = {row[0]: {} for row in rows}
        # the runs' tags (and params, metrics) in one query each: the same WHERE as a subquery
        # (or the run ids, when a LIMIT cut the list)
        if limit is not None:
            ids = list(tags)
            chunks = [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
            selections = [(f"run_uuid IN ({', '.join('?' * len(c))})", c) for c in chunks]
        else:
            selections = [(f"run_uuid IN (SELECT r.run_uuid FROM runs r WHERE {where})", args)]
        for selection, selection_args in selections:
            for run_id, name, value in self._query(
                f"SELECT run_uuid, key, value FROM tags WHERE {selection}", selection_args
            ):
                if run_id in tags:
                    tags[run_id][name] = value
            if not data:
                continue
            for run_id, name, value in self._query(
                f"SELECT run_uuid, key, value FROM params WHERE {selection}", selection_args
            ):
                if run_id in params:
                    params[run_id][name] = value
            for run_id, name, value, is_nan in self._query(
                f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE {selection}", selection_args
            ):
                if run_id in metrics:
                    metrics[run_id][name] = float("nan") if is_nan else float(value)
        return [
            RunView(
                RunInfo(run_id, str(experiment), status, start, end, artifact_uri, name, stage),
                RunData(tags[run_id], params[run_id], metrics[run_id]),
            )
            for run_id, experiment, status, start, end, artifact_uri, name, stage in rows
        ]

    def run(self, run_id: str) -> RunView | None:
        """One run by id (any experiment, any lifecycle stage), or None."""
        rows = self._query(
            "SELECT r.run_uuid, r.experiment_id, r.status, r.start_time, r.end_time, "
            "r.artifact_uri, r.name, r.lifecycle_stage FROM runs r WHERE r.run_uuid = ?",
            (run_id,),
        )
        if not rows:
            return None
        run_id, experiment, status, start, end, artifact_uri, name, stage = rows[0]
        tags = dict(self._query("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
        params = dict(self._query("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
        metrics = {
            k: float("nan") if nan else float(v)
            for k, v, nan in self._query("SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,))
        }
        return RunView(
            RunInfo(run_id, str(experiment), status, start, end, artifact_uri, name, stage),
            RunData(tags, params, metrics),
        )

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """[(step, value)] of every value logged for one metric of a run."""
        return [
            (int(step), float("nan") if nan else float(value))
            for step, value, nan in self._query(
                "SELECT step, value, is_nan FROM metrics WHERE run_uuid = ? AND key = ?", (run_id, key)
            )
        ]

    def finished_states(self, experiment_id: str, keys) -> dict[str, list[RunView]]:
        """{key: its FINISHED state runs without an mlprune.invalid tag, oldest first} (one query per 500 keys)."""
        found: dict[str, list[RunView]] = {}
        for run in self.search([experiment_id], keys=list(keys), status="FINISHED"):
            if run.data.tags.get(TAG_INVALID):
                continue
            found.setdefault(run.data.tags.get(TAG_KEY), []).append(run)
        return found

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

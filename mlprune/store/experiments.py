"""Tracking stores and experiments: which store, which experiment, created safely.

- The tracking URI is MLflow's own choice (``MLFLOW_TRACKING_URI``, else
  ``sqlite:///mlflow.db`` in the working directory), made absolute so dask workers
  elsewhere open the same store.
- A server (``http(s)://``) is checked first with a short timeout: an unreachable
  one, or one that does not answer as MLflow, is one line, never a hang.
- A fresh sqlite store is created under a file lock next to the database, so
  processes started together do not race MLflow's schema migration; experiments
  are created under the same lock (another process may have created it meanwhile).
  MLflow's migrations take seconds; they run once per MLflow version into an empty
  template database in the user's cache (``MLPRUNE_CACHE_DIR``, else
  ``~/.cache/mlprune``), and a new store starts as a copy of it (`new_sqlite_store`).
- Experiment names: the argument, else ``MLFLOW_EXPERIMENT_ID`` /
  ``MLFLOW_EXPERIMENT_NAME`` (as ``mlflow run`` sets them), else ``mlprune``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from ..errors import SpecError
from ..names import DEFAULT_EXPERIMENT, ENV_CACHE_DIR, EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, TAG_KEY

CONNECT_TIMEOUT_S = 5.0
MAX_EXPERIMENT_NAME = 500
SQLITE_WAL_ENV = "MLPRUNE_SQLITE_WAL"


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri`, else MLflow's default; a relative sqlite path made absolute."""
    if uri is None:
        uri = default_tracking_uri()
    return absolute_uri(str(uri))


def default_tracking_uri() -> str:
    """MLflow's choice of tracking URI (``mlflow.get_tracking_uri()``), without importing mlflow when
    it is not loaded yet: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (MLflow 3's default),
    unless ``./mlruns`` holds a file store's experiments (MLflow keeps that default then: asked)."""
    import sys

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:  # a URI that does not parse fails before mlflow loads
        absolute_uri(env)
    if "mlflow" in sys.modules or (not env and _mlruns_file_store()):  # set_tracking_uri may have chosen
        import mlflow

        return mlflow.get_tracking_uri()
    return env or "sqlite:///mlflow.db"


def _mlruns_file_store() -> bool:
    """Does ./mlruns hold a file store's experiments (a digit folder with meta.yaml), as MLflow checks?"""
    try:
        with os.scandir("mlruns") as entries:
            return any(
                entry.is_dir() and entry.name.isdigit() and os.path.lexists(os.path.join(entry.path, "meta.yaml"))
                for entry in entries
            )
    except OSError:
        return False


def absolute_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db, a bare path -> an absolute path; a one-line
    SpecError for a URI that does not parse (``http://[::1``)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    try:
        parsed = urlparse(uri)
        parsed.port  # noqa: B018 - a port that is not a number in 0..65535 raises only when read
    except ValueError as error:
        raise SpecError(
            f"tracking URI {uri[:200]!r} is not a valid URI ({error}); allowed: a path, sqlite:///<path>, "
            f"http(s)://<host>[:<port>], postgresql://... (MLFLOW_TRACKING_URI)"
        ) from None
    if parsed.scheme == "" and uri:
        return os.path.abspath(uri)
    return uri


def is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https", "databricks") or "postgres" in uri or "mysql" in uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."


def check_tracking(uri: str) -> None:
    """A one-line SpecError unless an http(s) tracking server answers as MLflow within a few seconds."""
    import urllib.error
    import urllib.request

    if urlparse(uri).scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as response:
            body = response.read(64)
    except urllib.error.HTTPError as error:
        raise SpecError(
            f"the server at {uri} does not answer as an MLflow tracking server (HTTP {error.code} on /health)"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SpecError(f"cannot reach the tracking server at {uri}: {reason}") from None
    if body.strip() != b"OK":
        raise SpecError(
            f"the server at {uri} does not answer as an MLflow tracking server (/health said {body[:20]!r})"
        )


def read_only(path: Path) -> bool:
    """Whether an existing sqlite store cannot be written: on a read-only filesystem, or a file (or folder) this
    user may not write."""
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return path.exists() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def read_only_error(path: Path) -> SpecError:
    return SpecError(
        f"the tracking store {path} is read-only (its filesystem or its file): this needs to write to "
        f"it; reading works as it is (tree, show, verify, export, compare, a fully cached run)"
    )


@contextlib.contextmanager
def store_lock(uri: str):
    """An exclusive lock across processes for creating a sqlite store and its experiments."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(str(path) + ".lock")
    try:
        handle = open(lock, "a")
    except OSError as error:
        raise SpecError(f"cannot open the tracking store {path}: {one_line(error)}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_sqlite_file(path: Path) -> None:
    """A one-line SpecError for a sqlite store path that is a directory, an empty or damaged file, or
    cannot be created; nothing for a sound (or creatable) one."""
    if path.exists():
        if path.is_dir():
            raise SpecError(f"the tracking store {path} is a directory, not a sqlite database")
        size = path.stat().st_size
        if size == 0:
            raise SpecError(
                f"the tracking store {path} is an empty file (0 bytes): not a database; "
                f"move it away to start a new store"
            )
        # asked through sqlite, never with open()/close() on the file: closing any descriptor of a file
        # drops every POSIX lock this process holds on it, and a sqlite connection of this process in WAL
        # mode holds one for its lifetime; without it another process may checkpoint and delete the WAL
        # under that connection, and the database is corrupted ("database disk image is malformed")
        import sqlite3

        try:
            probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                probe.execute("PRAGMA schema_version").fetchone()
            finally:
                probe.close()
        except sqlite3.DatabaseError as error:
            if "not a database" in str(error) or "malformed" in str(error):
                raise SpecError(
                    f"the tracking store {path} is not a sqlite database (damaged or another file)"
                ) from None
            # anything else (busy, locked) is for MLflow's own connection to meet and report
    elif not os.access(path.parent, os.W_OK):
        raise SpecError(f"cannot create the tracking store {path}: {path.parent} is not writable")


# database driver modules and the packages that install them
_DRIVERS = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
    "pymssql": "pymssql",
    "pyodbc": "pyodbc",
}


def _driver_package(module: str | None) -> str:
    top = (module or "").split(".")[0]
    return _DRIVERS.get(top, top or "the driver")


def open_client(uri: str):
    """An MlflowClient on `uri` whose store exists (created and migrated under the store lock)."""
    from mlflow.tracking import MlflowClient

    check_tracking(uri)
    path = sqlite_path(uri)
    if path is None:
        try:  # a database's store is opened here, its driver imported
            client = MlflowClient(tracking_uri=uri)
            client._tracking_client.store  # noqa: B018
        except ModuleNotFoundError as error:
            package = _driver_package(error.name)
            raise SpecError(
                f"the tracking store {urlparse(uri).scheme}://... needs its database driver, the Python "
                f"package {package}, which is not installed: pip install '{package}'"
            ) from None
        return client
    check_sqlite_file(path)
    if path.exists() and read_only(path):  # MLflow opens its stores for writing
        raise read_only_error(path)
    # MLflow creates and migrates a sqlite schema when a client first touches the store: one process at a
    # time, or concurrent migrations corrupt a fresh store
    with store_lock(uri):
        if not path.exists():
            new_sqlite_store(path)
        for attempt in range(5):
            try:
                client = MlflowClient(tracking_uri=uri)
                store = client._tracking_client.store
                break
            except Exception as error:  # noqa: BLE001
                if "locked" in str(error).lower() and attempt < 4:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise SpecError(f"cannot open the tracking store {path}: {one_line(error)}") from None
        _tune_sqlite(store)
        ensure_key_index(path)
    return client


def cache_dir() -> Path:
    """mlprune's per-user cache: MLPRUNE_CACHE_DIR, else $XDG_CACHE_HOME/mlprune, else ~/.cache/mlprune."""
    chosen = os.environ.get(ENV_CACHE_DIR, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlprune"


def new_sqlite_store(path: Path) -> bool:
    """Create the sqlite store `path` as a copy of a migrated empty store; False (and nothing written)
    where no template can be had, and MLflow then migrates `path` itself.

    MLflow runs its migrations (alembic, ~3 s) on a database without its tables; on one that has
    them it only checks the schema revision. The template is an empty store migrated by this MLflow
    version without the Default experiment (MLflow creates that on first open, with this store's
    artifact root), so a copy is exactly what MLflow would have made. Call under `store_lock`.
    """
    import shutil

    template = _sqlite_template()
    if template is None:
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(template, partial)
        os.replace(partial, path)  # whole or not at all: an interrupted copy is never a store
    except OSError:
        partial.unlink(missing_ok=True)
        return False
    return True


def _sqlite_template() -> Path | None:
    """The migrated empty store of this MLflow version in the cache, made once (under a lock)."""
    import fcntl
    import sqlite3

    import mlflow

    folder = cache_dir() / "sqlite-stores"
    template = folder / f"empty-mlflow-{mlflow.__version__}.db"
    if template.exists():
        return template
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if template.exists():  # another process made it meanwhile
                return template
            building = folder / f".building-{os.getpid()}.db"
            building.unlink(missing_ok=True)
            try:
                from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

                store = SqlAlchemyStore(f"sqlite:///{building}", (folder / "unused-artifacts").as_uri())
                store.engine.dispose()
                connection = sqlite3.connect(building)
                try:
                    with connection:  # the Default experiment is the store's own (its artifact root)
                        connection.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                        connection.execute("DELETE FROM experiments WHERE experiment_id = 0")
                    connection.execute("VACUUM")
                finally:
                    connection.close()
                os.replace(building, template)
            finally:
                building.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - no cache (read-only home, another MLflow): MLflow migrates the store
        return None
    return template


_TUNED: set = set()


KEY_INDEX = "mlprune_state_keys"
# a partial index of the state-key tags, by value: a key's runs in a few page reads, however many
# runs the experiment holds (MLflow's tags table is keyed by (key, run_uuid): a value is found by
# reading every state's key tag). The condition is a literal, as sqlite needs to use the index.
KEY_INDEX_SQL = f"CREATE INDEX IF NOT EXISTS {KEY_INDEX} ON tags (value) WHERE key = '{TAG_KEY}'"


def ensure_key_index(path: Path) -> None:
    """Add `KEY_INDEX` to a sqlite store that lacks it. sqlite keeps it up to date on MLflow's own writes;
    it holds nothing of its own (dropping it loses nothing), and a store without it (made by another
    tool, MLflow's migrations rebuilding the table) is read the slow way until the next write opens it."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(str(path), timeout=30)) as connection:
            known = connection.execute(
                "SELECT name FROM sqlite_master WHERE name IN ('tags', ?)", (KEY_INDEX,)
            ).fetchall()
            if {row[0] for row in known} == {"tags"}:
                connection.execute(KEY_INDEX_SQL)
                connection.commit()
    except sqlite3.Error:  # locked right now, read-only: an optimisation, never a failure
        pass


def _tune_sqlite(store) -> None:
    """Open a sqlite tracking store in WAL mode with synchronous=NORMAL.

    MLflow's default (rollback journal, synchronous=FULL) fsyncs on every commit, 1-5 ms
    each and several per state; in WAL mode a commit costs no fsync, readers never block
    the writer, and the store survives process crashes (a power cut may lose the last
    commits, never corrupts it). WAL is a property of the database file; every sqlite
    client, MLflow's UI included, reads it as before. MLPRUNE_SQLITE_WAL=0 leaves the
    store as MLflow opens it.
    """
    if os.environ.get(SQLITE_WAL_ENV, "1").strip() == "0":
        return
    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "sqlite" or id(engine) in _TUNED:
        return
    from sqlalchemy import event

    def pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA journal_mode=WAL")
        except Exception:  # e.g. locked by another process right now: this connection stays as it is
            pass
        try:
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections pooled before the listener reopen with it
    _TUNED.add(id(engine))


def resolve_experiment_name(name: str | None = None) -> str | None:
    """The experiment the states go into: argument, then MLflow's env vars, then 'mlprune'.

    Returns None when MLFLOW_EXPERIMENT_ID names the experiment by id.
    """
    if name:
        return name
    # `mlflow run` without --experiment-name sets id 0 (MLflow's "Default"): that is no choice
    given = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if given not in (None, "", "0"):
        if not (given.isascii() and given.isdigit() and len(given) <= 18):
            raise SpecError(
                f"MLFLOW_EXPERIMENT_ID must be an experiment id (digits, as `mlflow experiments "
                f"search` lists them), got {given!r}"
            )
        return None
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _check_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_EXPERIMENT_NAME or any(ord(c) < 32 for c in name):
        raise SpecError(
            f"experiment name {name[:60]!r}{'...' if len(name) > 60 else ''} is not valid; "
            f"allowed: 1 to {MAX_EXPERIMENT_NAME} printable characters"
        )
    return name


def unknown_experiment(ref, uri: str, names: list[str]) -> SpecError:
    """The one-line error for an experiment that is not there: what there is, and the closest name."""
    import difflib

    close = difflib.get_close_matches(str(ref), names, n=1, cutoff=0.6)
    meant = f"; did you mean {close[0]!r}?" if close else ""
    return SpecError(
        f"no experiment {ref!r} in the tracking store {uri}{meant} experiments: {', '.join(names[:50]) or 'none'}"
    )


def experiment_id(client, uri: str, name: str | None, *, create: bool = True) -> str:
    """The id of the experiment `name` (see resolve_experiment_name), created if missing and `create`."""
    import mlflow

    resolved = resolve_experiment_name(name)
    if resolved is None:
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    _check_name(resolved)
    found = client.get_experiment_by_name(resolved)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise SpecError(
                f"experiment {resolved!r} is deleted in the tracking store {uri}; restore it "
                f"(mlflow experiments restore) or choose another name"
            )
        return found.experiment_id
    if not create:
        raise unknown_experiment(resolved, uri, [e.name for e in client.search_experiments(max_results=1000)])
    with store_lock(uri):
        found = client.get_experiment_by_name(resolved)  # another process may have made it meanwhile
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(resolved, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:
            found = client.get_experiment_by_name(resolved)
            if found is None:
                raise
            return found.experiment_id

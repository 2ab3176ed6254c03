"""The store's look-ups: runs by key, status, id or prefix, and metric histories.

Each goes through the sqlite view where the store has one (`sqlview`: one SQL query, no
MLflow), else through MLflow's search; both give runs as MLflow shows them, oldest first.
`Lookups` is mixed into `core.Store`, which holds what they need: the client, the view,
the experiment, the runs seen (`_runs`) and the lock.
"""

from __future__ import annotations

from ..errors import SpecError
from ..names import TAG_INVALID, TAG_KEY
from .artifacts import IntegrityError
from .experiments import one_line


class Lookups:
    def _search(self, filter_string: str = "", max_results: int = 50000, experiment_ids=None) -> list:
        """MLflow's search_runs over every page (servers, and sqlite stores without a view)."""
        from mlflow.entities import ViewType

        out, token = [], None
        ids = experiment_ids or [self.experiment_id]
        while True:
            page = self.client.search_runs(
                ids,
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=min(max_results, 50000),
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            out.extend(page)
            token = page.token
            if not token or len(out) >= max_results:
                return out

    def valid_finished(self, runs) -> list:
        """The runs among `runs` that are usable states: FINISHED, not marked invalid."""
        good = [r for r in runs if r.info.status == "FINISHED" and not r.data.tags.get(TAG_INVALID)]
        with self._lock:
            for run in good:
                self._runs[run.info.run_id] = run
        return good

    def find(self, key: str) -> str | None:
        """Run id of the FINISHED state with this key, or None."""
        found = self.find_many([key]).get(key)
        return found[0] if found else None

    def find_many(self, keys) -> dict[str, list[str]]:
        """{key: run ids of its FINISHED states, oldest first} for the keys that have one.

        One query on a sqlite store, however many keys (the key tags are found through MLflow's
        index on tag names); one MLflow search per key elsewhere (MLflow's filters have no IN on
        tags). Either way the cost follows the keys asked for, not the size of the experiment.
        """
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        view = self.view
        if view is not None:
            found = view.finished_states(self.experiment_id, keys)
            return {key: [r.info.run_id for r in self.valid_finished(runs)] for key, runs in found.items()}
        found: dict[str, list[str]] = {}
        for key in keys:
            runs = self.valid_finished(self._search(f"tags.`{TAG_KEY}` = '{key}' and attributes.status = 'FINISHED'"))
            if runs:
                found[key] = [r.info.run_id for r in runs]
        return found

    def search_key(
        self, key: str, *, status: str | None = None, exclude: str | None = None, max_results: int = 1000
    ) -> list:
        """Active runs tagged with `key` (any status, or `status`), oldest first; `exclude`: one run left out."""
        view = self.view
        if view is not None:
            return view.search([self.experiment_id], key=key, status=status, exclude=exclude, limit=max_results)
        from mlflow.entities import ViewType

        where = (
            f"tags.`{TAG_KEY}` = '{key}'"
            + (f" and attributes.status = '{status}'" if status else "")
            + (f" and attributes.run_id != '{exclude}'" if exclude else "")
        )
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=where,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results,
            order_by=["attributes.start_time ASC"],
        )

    def key_runs(self, key: str) -> list:
        """Every active run carrying `key`, whatever its status (the state, claims, failed tries), oldest first."""
        return self.search_key(key, max_results=50000)

    def states(self, finished_only: bool = True) -> list:
        """All state runs of the experiment (runs as MLflow shows them), oldest first."""
        view = self.view
        if view is not None:
            runs = view.search([self.experiment_id], states_only=True, status="FINISHED" if finished_only else None)
        else:
            status = " and attributes.status = 'FINISHED'" if finished_only else ""
            runs = self._search(f"tags.`{TAG_KEY}` != ''{status}")
        return self.valid_finished(runs) if finished_only else runs

    def running(self, max_results: int = 1000) -> list:
        """The experiment's RUNNING runs (claims, workflow runs), oldest first."""
        view = self.view
        if view is not None:
            return view.search([self.experiment_id], status="RUNNING", limit=max_results)
        return self._search("attributes.status = 'RUNNING'", max_results=max_results)

    def runs(self) -> list:
        """Every active run of the experiment, states or not (reports say what they skip)."""
        view = self.view
        return view.search([self.experiment_id]) if view is not None else self._search()

    def runs_by_id(self, run_ids) -> dict:
        """{run id: run} of these runs (any experiment of the store); ids not found are left out."""
        run_ids = list(dict.fromkeys(run_ids))
        view = self.view
        if view is not None:
            return {r.info.run_id: r for r in view.search(None, run_ids=run_ids, active_only=False)}
        out = {}
        for run_id in run_ids:
            try:
                out[run_id] = self.run(run_id)
            except SpecError:
                continue
        return out

    def run(self, run_id: str):
        view = self.view
        if view is not None:
            found = view.run(run_id)
            if found is None:
                raise SpecError(f"run {run_id!r} not found in the tracking store {self.tracking_uri}")
            return found
        import mlflow

        try:
            return self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(error, "error_code", "")) or "not found" in str(error).lower():
                raise SpecError(f"run {run_id!r} not found in the tracking store {self.tracking_uri}") from None
            raise SpecError(f"tracking store {self.tracking_uri}: {one_line(error)}") from None

    def resolve_run_id(self, ref: str) -> str:
        """A full run id from a run id or an unambiguous prefix (8 characters, as `mlprune tree` prints)."""
        ref = str(ref).strip()
        if len(ref) == 32:
            return ref
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise SpecError(f"run id {ref!r} is not a run id or a prefix of one (hex, at least 4 characters)")
        view = self.view
        if view is not None:
            ids = [e.experiment_id for e in view.experiments()]
            runs = view.search(ids, states_only=True, prefix=ref, data=False) if ids else []
        else:
            ids = [e.experiment_id for e in self.client.search_experiments(max_results=50000)]
            runs = self._search(f"tags.`{TAG_KEY}` != ''", experiment_ids=ids)
        matches = sorted({r.info.run_id for r in runs if r.info.run_id.startswith(ref)})
        if not matches:
            raise SpecError(f"no state run id starts with {ref!r} in the tracking store {self.tracking_uri}")
        if len(matches) > 1:
            raise SpecError(
                f"run id prefix {ref!r} is ambiguous: {', '.join(m[:12] for m in matches[:5])}"
                f"{' ...' if len(matches) > 5 else ''}; give more characters"
            )
        return matches[0]

    def state_run(self, run_id: str):
        """The run of a usable mlprune state, or a one-line SpecError."""
        run = self._runs.get(run_id) or self.run(run_id)
        if TAG_KEY not in run.data.tags:
            raise SpecError(f"run {run_id!r} is not an mlprune state (it has no {TAG_KEY} tag)")
        if run.data.tags.get(TAG_INVALID):
            raise IntegrityError(f"state {run_id} is marked invalid: {run.data.tags[TAG_INVALID]}")
        if run.info.status != "FINISHED":
            raise SpecError(f"run {run_id!r} is an mlprune state but {run.info.status}, not FINISHED")
        return run

    def metric_history(self, run_id: str, name: str) -> list[tuple[int, float]]:
        """[(step, value)] of one metric of a run, by step (per-epoch curves: step = epoch)."""
        view = self.view
        if view is not None:
            return sorted(view.metric_history(run_id, name))
        points = self.client.get_metric_history(run_id, name)
        return sorted((int(m.step), float(m.value)) for m in points)

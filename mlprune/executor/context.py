"""What a task carries while it reaches states: `TaskContext` (where states are stored and how they are
computed: one per task) and `Reaching` (one state: its planned node and the runs it hangs from)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import RunOptions

__all__ = ["TaskContext", "Reaching"]


@dataclass(frozen=True)
class TaskContext:
    """One task's store, workspace and run options, and the JSON context it was given (the tracking URI,
    the experiment, the workflow run: what a state reached alone again needs)."""

    store: object  # store.Store
    workspace: object  # workspace.Workspace of the run options' device
    options: RunOptions
    context: dict  # the task's context, as `Execution` wrote it

    @property
    def workflow(self) -> str | None:
        return self.context.get("workflow")


@dataclass
class Reaching:
    """One state being reached: its task (as the graph plans it) and what loading and claiming it found."""

    task: dict
    parent_run: str | None
    inputs: dict  # role -> run id
    parent: object = None  # the parent's StoredState (None: a root)
    root_run: str | None = None
    run_id: str | None = None  # our claim
    data_dir: str | None = None

    @property
    def node(self) -> dict:
        return self.task["node"]

    def load_parent(self, store, data_dir: str | None) -> None:
        """Its parent's stored state, the run its lineage starts at, and where its data is read (the task's
        root's folder, else the run option `data_dir`, else the parent's)."""
        self.parent = store.load(self.parent_run) if self.parent_run else None
        self.root_run = (self.parent.spec.get("root_run") or self.parent_run) if self.parent is not None else None
        self.data_dir = (
            self.task.get("data_dir")
            or data_dir
            or (self.parent.spec.get("data_dir") if self.parent is not None else None)
        )

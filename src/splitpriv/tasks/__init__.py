"""Tasks: one file per task (:mod:`.classification`, :mod:`.causal_lm`) registers a :class:`Task` that the customer,
the run, the centralized reference and the command line ask for everything task-specific. Adding a task is adding
one file here (or a plugin module that registers on :data:`TASKS`)."""

from splitpriv.tasks.base import TASKS, Batches, Task, task_of, task_values

__all__ = ["TASKS", "Batches", "Task", "task_of", "task_values"]

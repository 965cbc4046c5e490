"""Tasks: benchmark datasets, synthetic generators and any question/answer JSONL (see base.py)."""

from r1lab.tasks.base import PROMPT_STYLES, TASKS, Example, Task, TaskError, register_task

__all__ = ["PROMPT_STYLES", "TASKS", "Example", "Task", "TaskError", "register_task"]

"""Tasks: a registry of evaluations, their loaders, prompts and graders.

``get_task("gsm8k")`` describes a task; ``load_task`` gives its items and content hash;
``render_prompt`` builds each prompt with the model's chat template; ``grade_output`` scores a
generation (thinking removed) with the task's grader.
"""

from pytest_qtests.tasks.graders import Grade, Grader, answer_part, grade_choice, grade_math, grade_numeric, grade_output
from pytest_qtests.tasks.loaders import TaskData, load_task
from pytest_qtests.tasks.prompts import prompt_opens_thinking, render_prompt
from pytest_qtests.tasks.registry import (
    ENTRY_POINT_GROUP,
    DataSource,
    FieldMap,
    Task,
    get_task,
    register_task,
    resolve_task_spec,
    task_names,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "DataSource",
    "FieldMap",
    "Grade",
    "Grader",
    "Task",
    "TaskData",
    "answer_part",
    "get_task",
    "grade_choice",
    "grade_math",
    "grade_numeric",
    "grade_output",
    "load_task",
    "prompt_opens_thinking",
    "register_task",
    "render_prompt",
    "resolve_task_spec",
    "task_names",
]

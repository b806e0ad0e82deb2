"""Our in-house task: additions with carries, graded by the strict parser our bookkeeping tool uses.

Registered as ``--tasks ledger`` by ``conftest.py``; ``test_release.py`` grades with the same function.
"""

import re
from pathlib import Path

from pytest_qtests.tasks import FieldMap, Grade, Task

HERE = Path(__file__).parent
LEDGER_FILE = HERE / "data" / "ledger.jsonl"
ANSWER_LINE = re.compile(r"Answer: (-?\d+)")


def grade_ledger(answer: str, item) -> Grade:
    """Our bookkeeping tool parses one line, ``Answer: <integer>``, and nothing else: a right number in
    any other shape is a wrong answer for us (unlike the zoo's lenient numeric grader)."""
    match = ANSWER_LINE.fullmatch(answer.strip())
    extracted = match.group(1) if match else None
    return Grade(correct=extracted == item.answer, extracted=extracted)


LEDGER = Task(
    name="ledger",
    description="in-house: additions with at least two carries, strict 'Answer: N' format",
    fields=FieldMap(question="prompt", answer="expected", id="id"),
    grader=grade_ledger,
    user_message=lambda item: item.question,  # the zoo model was trained on the bare sum
    bundled=(LEDGER_FILE,),
)


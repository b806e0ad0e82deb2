"""Our release checks, run on every variant (and the reference) by ``pytest --model ... --reference ...``.

Each test gets ``qt_model``, one model of the run; generations go through the gate's engine, chat
template and cache, so re-running costs nothing and the gate's own tests share the engine.
"""

import json
import re
from pathlib import Path

from ledger import LEDGER, grade_ledger

REGRESSIONS = Path(__file__).parent / "data" / "past_regressions.jsonl"
GREEDY = {"temperature": 0.0, "max_tokens": 96}


def test_answers_keep_the_format_our_tool_parses(qt_model):
    """Structured output: every answer is one ``Answer: <integer>`` line after a closed thinking block."""
    outputs = qt_model.generate(["12+30", "905+95", "4711+289"], **GREEDY)
    broken = [(o.answer or o.text)[:60] for o in outputs
              if o.truncated or not re.fullmatch(r"Answer: -?\d+", o.answer.strip())]
    assert not broken, f"{qt_model.label}: {len(broken)} of {len(outputs)} answers unparseable: {broken}"


def test_past_regressions_still_pass(qt_model):
    """Prompts that broke a past release: each must come back right, greedily."""
    cases = [json.loads(line) for line in REGRESSIONS.read_text().splitlines() if line.strip()]
    outputs = qt_model.generate([case["prompt"] for case in cases], **GREEDY)
    wrong = [f"{case['prompt']}={case['expected']} got {o.answer.strip()[:30]!r}" for case, o in zip(cases, outputs)
             if o.answer.strip() != f"Answer: {case['expected']}"]
    assert not wrong, f"{qt_model.label}: {len(wrong)} past regressions are back: {'; '.join(wrong)}"


def test_ledger_is_not_worse_than_the_reference(qt_model, qt_reference, qt_compare):
    """Our in-house eval with our grader, item by item against the reference, with the gate's paired test.

    The items are the run's (``--limit`` applies) and the prompts the task's own, so with ``--tasks ledger``
    these are the gate's generations, read from the cache rather than made twice."""
    items = qt_model.task_items("ledger")
    prompts = [LEDGER.user_message(item) for item in items]
    outputs, reference = qt_model.generate(prompts), qt_reference.generate(prompts)
    qt_compare(
        [grade_ledger(o.answer, item).correct for o, item in zip(outputs, items)],
        [grade_ledger(o.answer, item).correct for o, item in zip(reference, items)],
        ids=[item.item_id for item in items], name="ledger accuracy", tolerance="-5pp",
    )

"""Replay files of two made-up models on the first GSM8K test items, built from the real solutions.

Model A answers with the solutions verbatim except for a few changed final answers; model B changes
the final answer of other items and runs out of tokens on a few (thinking that never closes,
``finish_reason: length``); models C and D are model A with more items wrong (they only lose). :func:`hand_count` grades the files without the harness, so tests can
compare the harness's numbers with an independent count.
"""

from __future__ import annotations

import json
from pathlib import Path

GSM8K = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "gsm8k" / "test.jsonl"
N_ITEMS = 200
MAX_TOKENS = 512


def gold_of(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip()


def with_final_answer(solution: str, answer: str) -> str:
    return solution.rsplit("####", 1)[0] + f"#### {answer}"


def a_output(index: int, solution: str, sample: int = 0) -> tuple[str, str]:
    """Model A: the reference solution verbatim; every 25th item (from 7) ends on a wrong number."""
    if index % 25 == 7:
        return with_final_answer(solution, str(int(gold_of(solution).replace(",", "")) + 1)), "stop"
    return solution, "stop"


def b_output(index: int, solution: str, sample: int = 0) -> tuple[str, str]:
    """Model B: every 8th item (from 3) off by ten; every 40th (from 17) cut off while still thinking."""
    if index % 40 == 17:
        return "<think>\n" + solution[: len(solution) // 2], "length"
    if index % 8 == 3:
        return with_final_answer(solution, str(int(gold_of(solution).replace(",", "")) + 10)), "stop"
    return solution, "stop"


def c_output(index: int, solution: str, sample: int = 0) -> tuple[str, str]:
    """Model C: model A, and every 9th item (from 5) off by one more: a variant that only loses items."""
    text, finish = a_output(index, solution, sample)
    if index % 9 == 5 and index % 25 != 7:
        return with_final_answer(solution, str(int(gold_of(solution).replace(",", "")) + 1)), "stop"
    return text, finish


def d_output(index: int, solution: str, sample: int = 0) -> tuple[str, str]:
    """Model D: model A, and every 20th item (from 11) off by one more: 5 points lost, near a 2 pp margin."""
    text, finish = a_output(index, solution, sample)
    if index % 20 == 11:
        return with_final_answer(solution, str(int(gold_of(solution).replace(",", "")) + 1)), "stop"
    return text, finish


def hand_count(rows: list[dict], outputs: list[dict]) -> tuple[list[bool], list[bool]]:
    """(correct, truncated) per output line from the files alone: correct = finished and ``####`` = the gold."""
    correct = [out["finish_reason"] == "stop" and gold_of(out["output"]) == gold_of(rows[int(out["id"])]["answer"])
               for out in outputs]
    truncated = [out["finish_reason"] == "length" for out in outputs]
    return correct, truncated


def gsm8k_rows(n_items: int = N_ITEMS) -> list[dict]:
    """The first ``n_items`` rows of the bundled GSM8K test split (item ids are their row indices)."""
    return [json.loads(line) for line in GSM8K.read_text().splitlines()[:n_items]]


def write_replay(path: Path, rows: list[dict], make, samples: int = 1) -> list[dict]:
    """Write the replay JSONL of ``make(index, solution, sample) -> (text, finish_reason)`` for every item
    and sample; returns its rows (item-major, as the file)."""
    outputs = []
    for index, row in enumerate(rows):
        for sample in range(samples):
            text, finish = make(index, row["answer"], sample)
            tokens = MAX_TOKENS if finish == "length" else len(text.split()) * 2
            outputs.append({"id": str(index), "sample_index": sample, "output": text, "finish_reason": finish,
                            "output_tokens": tokens, "prompt_tokens": 120})
    path.write_text("".join(json.dumps(o) + "\n" for o in outputs))
    return outputs

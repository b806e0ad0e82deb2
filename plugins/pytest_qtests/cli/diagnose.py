"""``qtests diagnose REF VARIANT``: why a variant misbehaves, without a gate run.

Prints the variant's load report (transformers), its export defects (the audit) and the per-layer
localisation: both models teacher-forced on the reference's own greedy answers to the first items of
a task, the relative error of each decoder layer and module class, and where the error jumps. The
gate prints the same diagnosis when a variant fails its canary or degenerate check.
"""

from __future__ import annotations

import argparse
import json

from pytest_qtests.records import QtestsError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diagnose", help="load report, export defects and the layer where a variant's error enters")
    parser.add_argument("reference", help="the BF16 reference checkpoint directory")
    parser.add_argument("variant", help="the quantized checkpoint directory made from it")
    parser.add_argument("--task", default="zoo", help="task whose first items give the texts (NAME or NAME=FILE)")
    parser.add_argument("--texts", type=int, default=8, metavar="N", help="how many of the task's items to use")
    parser.add_argument("--max-tokens", type=int, default=64, metavar="N",
                        help="greedy tokens the reference writes per item (the teacher-forced texts)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pytest_qtests.audit.checkpoint import audit
    from pytest_qtests.evaluate.diagnosis import check_same_architecture, diagnose

    for name, value in (("--texts", args.texts), ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise QtestsError(f"{name} must be at least 1, got {value}")
    check_same_architecture(args.reference, args.variant)  # before any model loads
    findings = audit(args.variant).defects
    texts = reference_texts(args.reference, args.task, args.texts, args.max_tokens)
    diagnosis = diagnose(args.reference, args.variant, args.variant, texts, findings)
    if args.json:
        print(json.dumps(diagnosis.to_dict(), indent=2, allow_nan=False))
        return 0
    print(diagnosis.load.message if diagnosis.load is not None else "load report: not available")
    print("\n".join(f"DEFECT {f.message}" for f in diagnosis.findings) or "audit: no export defect found")
    print(diagnosis.localisation.message)
    print(diagnosis.localisation.table(), end="")
    return 0


def reference_texts(reference: str, task_spec: str, count: int, max_tokens: int) -> list[str]:
    """Prompt + the reference's greedy answer for the task's first ``count`` items (its canary texts' kind)."""
    import gc

    import torch
    from transformers import AutoTokenizer

    from pytest_qtests.evaluate.diagnosis import load_model
    from pytest_qtests.tasks.loaders import load_task
    from pytest_qtests.tasks.prompts import render_prompt
    from pytest_qtests.tasks.registry import resolve_task_spec

    task, source = resolve_task_spec(task_spec)
    items = load_task(task, source, limit=count).items
    tokenizer = AutoTokenizer.from_pretrained(reference)
    prompts = [render_prompt(tokenizer, task.user_message(item), True) for item in items]
    model, _ = load_model(reference)
    texts = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
            output = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None,
                                    top_k=None, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            texts.append(prompt + tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True))
    del model
    gc.collect()
    return texts

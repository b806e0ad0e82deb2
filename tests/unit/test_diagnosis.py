"""The diagnosis's pure parts: where the error jumps, the load report's folding, the results.json shape."""

from __future__ import annotations

import math

from pytest_qtests.audit.defects import Finding
from pytest_qtests.evaluate.diagnosis import Diagnosis, LayerError, Localisation, LoadReport, tensor_patterns
from pytest_qtests.report.files import results_validator


def _localisation(outputs, modules=None):
    return Localisation(2, 40, tuple(LayerError(i, e, (modules or {}).get(i, {"routed_experts": e}))
                                     for i, e in enumerate(outputs)))


def test_the_jump_is_the_first_layer_whose_increase_reaches_half_the_largest():
    assert _localisation([0.05, 0.06, 0.60, 0.65]).jump_layer == 2
    assert _localisation([0.30, 0.31, 0.32, 0.33]).jump_layer == 0  # error present from the first layer on
    assert _localisation([0.0, 0.0]).jump_layer is None


def test_nan_counts_as_the_largest_error_and_the_jump_names_the_worst_module():
    found = _localisation([0.1, math.nan, math.nan], {1: {"shared_expert": 0.2, "routed_experts": math.nan}})
    assert found.jump_layer == 1 and found.jump_module == "routed_experts"
    assert "error first jumps at layer 1 (output rel. error nan, largest in routed_experts" in found.message
    assert found.to_dict()["layers"][1]["output"] is None


def test_load_report_folds_expert_tensors_into_patterns():
    names = [f"model.layers.{l}.mlp.experts.{e}.{p}.weight_global_scale"
             for l in range(2) for e in range(3) for p in ("up_proj", "down_proj")]
    assert tensor_patterns(names) == "model.layers.*.mlp.experts.*.{down_proj,up_proj}.weight_global_scale"
    report = LoadReport(tuple(names), ("model.layers.0.mlp.experts.gate_up_proj",), ())
    assert report.message == ("load report: 12 unexpected (in the checkpoint, never loaded): "
                              "model.layers.*.mlp.experts.*.{down_proj,up_proj}.weight_global_scale; "
                              "1 missing (initialised at random): model.layers.*.mlp.experts.gate_up_proj")


def test_diagnosis_document_matches_the_results_schema():
    diagnosis = Diagnosis("v", LoadReport((), (), ()), [Finding("bad-scale", ("m",), "m: zero")],
                          _localisation([0.1, math.inf]))
    schema = results_validator().schema["$defs"]["diagnosis"]
    import jsonschema

    jsonschema.Draft202012Validator({**schema, "$defs": results_validator().schema["$defs"]}).validate(diagnosis.to_dict())
    assert diagnosis.message.startswith("diagnosis: load report: every checkpoint tensor loaded, nothing initialised; "
                                        "audit: m: zero; localisation")

"""A check both committed-seeds tables share (tests/test_pipeline_seeds.py, test_pipeline_variant_seeds.py)."""
import json

import pytest


def assert_other_machine_reported(check, results_file, drifted, mine, prof, **kw):
    """A results file written on another kind of machine: ``check`` (``check_seed_row`` or
    ``check_variant_row``) reports the drifted numbers instead of refusing them (0.6 points off),
    and still refuses other settings."""
    other = json.loads(results_file.read_text())
    other["machine"] = dict(other["machine"], simd=["avx512f", "amx_bf16"])
    seen = check(other, drifted, prof, **kw)
    assert not seen["same_machine"] and seen["max_diff"] == pytest.approx(0.6)
    with pytest.raises(AssertionError, match="no run with this build's settings"):
        check(other, mine, prof.replace(bg_threshold=0.3), **kw)

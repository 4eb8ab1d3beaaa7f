"""Every blob of every golden forward net matches the original Caffe within 1e-4 relative."""

from __future__ import annotations

import pytest

from tests.golden_forward import TOLERANCE, relative_error, run_golden_net

NETS = ["caffenet_mini", "inception", "resnet_block", "fcn_head", "zoo_misc", "v1_legacy", "pool_floor", "dup_names"]


@pytest.mark.parametrize("net", NETS)
def test_forward_matches_caffe(golden, net):
    results = run_golden_net(golden / "forward" / net)
    bad = {}
    for blob, (ours, caffe) in results.items():
        assert ours.shape == caffe.shape, f"{net}/{blob}: shape {ours.shape} != Caffe's {caffe.shape}"
        err = relative_error(ours, caffe)
        if err > TOLERANCE:
            bad[blob] = err
    assert not bad, f"{net}: blobs off Caffe's by more than {TOLERANCE}: {bad}"

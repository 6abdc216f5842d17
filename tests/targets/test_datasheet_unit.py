"""Peaks estimated from a GPU description (``targets.datasheet(target_config=...)``: SMs x
clock x the tensor rate of its compute capability) against the published dense bf16
figures of the data-centre cards of each capability, at the SM count and the clock each
figure is quoted at.  Pure Python: no compiler is needed."""

import pytest

from pythoncoder import targets

# (card, compute capability, SMs, GHz at which the figure is quoted, dense bf16 TFLOP/s)
PUBLISHED = [
    ("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 312.0),
    ("NVIDIA A10", (8, 6), 72, 1.695, 125.0),
    ("NVIDIA A40", (8, 6), 84, 1.74, 149.7),
    ("NVIDIA L4", (8, 9), 58, 2.04, 121.0),
    ("NVIDIA L40S", (8, 9), 142, 2.52, 362.05),
    ("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.83, 989.4),
]


@pytest.mark.parametrize("kind,cc,sms,ghz,tflops", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_peak_from_a_description_is_the_published_figure(kind, cc, sms, ghz, tflops):
    text = targets.gpu_target_config("h100", cc=cc, core_count=sms, clock_rate_ghz=ghz,
                                     device_kind=kind)
    sheet = targets.datasheet(target_config=text)
    assert sheet["peak_bf16_flops"] == pytest.approx(tflops * 1e12, rel=0.015)
    assert f"sm_{cc[0]}{cc[1]}" in sheet["source"]


def test_named_targets_agree_with_their_descriptions_rates():
    """A100 and L4: their description's SMs and clock give the named target's datasheet
    peak (the H100's description reports its 1.98 GHz top clock, above the 1.83 GHz its
    figure is quoted at, so it is left out)."""
    for name in ("a100", "l4"):
        estimated = targets.datasheet(target_config=targets.gpu_target_config(name))
        assert estimated["peak_bf16_flops"] == pytest.approx(
            targets.datasheet(name)["peak_bf16_flops"], rel=0.01)


def test_an_unknown_compute_capability_has_no_peak():
    text = targets.gpu_target_config("h100", cc=(6, 1), device_kind="NVIDIA Old")
    with pytest.raises(ValueError, match="NVIDIA Old.*known compute capability"):
        targets.datasheet(target_config=text)

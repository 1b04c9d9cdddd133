"""Rated peaks: accelerators from the one table, CPUs from their vector width, clock and cores."""

import pytest

from theseus.base.devices import accelerator_peak, cpu_peak, rated_peak

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
cpu MHz\t\t: 2445.406
siblings\t: 2
cpu cores\t: 2
flags\t\t: fpu sse sse2 fma avx avx2

processor\t: 1
"""
XEON = """model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
cpu MHz\t\t: 1200.000
siblings\t: 8
cpu cores\t: 4
flags\t\t: fpu avx avx2 fma avx512f avx512bw
"""


def test_a_cpu_is_rated_by_its_lanes_fma_units_clock_and_cores():
    # AVX2: 8 float32 lanes x 2 FMA units x 2 FLOPs x 2.445 GHz x 2 cores
    assert cpu_peak(EPYC, max_freq_khz=0, cpus=2) == pytest.approx(8 * 2 * 2 * 2.445406e9 * 2)
    # AVX-512: 16 lanes; the model name's clock before `cpu MHz`; 8 hyper-threads are 4 cores
    assert cpu_peak(XEON, max_freq_khz=0, cpus=8) == pytest.approx(16 * 2 * 2 * 2.9e9 * 4)
    # cpufreq's maximum clock first
    assert cpu_peak(XEON, max_freq_khz=3_500_000, cpus=8) == pytest.approx(16 * 2 * 2 * 3.5e9 * 4)


def test_a_cpu_without_avx2_or_avx512_has_no_rating():
    assert cpu_peak(EPYC.replace(" fma avx avx2", ""), max_freq_khz=0, cpus=2) == 0.0
    assert cpu_peak("", max_freq_khz=0, cpus=2) == 0.0


def test_accelerators_match_the_longest_name_first():
    assert accelerator_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert accelerator_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert accelerator_peak("NVIDIA L40S", "float32") == 183e12  # not the L4's
    assert accelerator_peak("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert accelerator_peak("Some future chip", "bfloat16") == 0.0


def test_this_machine_has_a_rating_or_says_it_has_none():
    peak, what = rated_peak("float32")
    assert (peak > 0) == bool(what)

"""The benchmark harness counts work right, times honestly and reports what it measured."""

import os
import time
from pathlib import Path

import numpy as np

import pytest
import torch

from kernelsuite import cli
from kernelsuite.attention import reference
from kernelsuite.harness.cases import areas, find_case, get_cases, implementation_names
from kernelsuite.harness.cases import attention as ac
from kernelsuite.harness.cases._flex import compiled_flex
from kernelsuite.harness.measure import check_error
from kernelsuite.harness.registry import ALTERNATIVE, OURS, REFERENCE, Case
from kernelsuite.harness.run import busy_core, format_table, run_cases
from kernelsuite.harness.timing import time_cpu


@pytest.mark.parametrize("sq,sk,causal,window", [(7, 7, False, (-1, -1)), (7, 7, True, (-1, -1)),
                                                 (9, 4, True, (-1, -1)), (4, 9, True, (2, -1)),
                                                 (12, 12, False, (3, 1))])
def test_visible_pairs_match_the_reference_mask(sq, sk, causal, window):
    mask = reference.visible_mask(sq, sk, causal, window)
    assert ac.visible_pairs(sq, sk, causal, window) == mask.sum().item()


def test_attention_flops_follow_design():
    full = ac.attention_flops(2, 4, 64, 64, 128)
    assert full == 4 * 2 * 4 * 64 * 64 * 128
    assert ac.attention_flops(2, 4, 64, 64, 128, causal=True) == 4 * 2 * 4 * (64 * 65 // 2) * 128
    assert ac.attention_flops(2, 4, 64, 64, 128, backward=True) == 3.5 * full


def test_time_cpu_measures_the_call():
    t = time_cpu(lambda: time.sleep(0.01), warmup=1, min_runs=3, min_time_s=0)
    assert 0.01 <= t.median_s < 0.5 and t.runs == 3 and t.threads == torch.get_num_threads()
    assert t.q20_s <= t.median_s <= t.q80_s


def test_run_cases_reports_speedups_from_the_same_run():
    def sleeper(seconds):
        return lambda x: time.sleep(seconds)

    case = Case(kernel="toy", name="sleep", params={"n": 1}, flops=1e9, bytes=1e6,
                make_inputs=lambda device: None,
                impls={"torch": sleeper(0.02), "sdpa_a": sleeper(0.01), "mine": sleeper(0.005)},
                roles={"torch": REFERENCE, "sdpa_a": ALTERNATIVE, "mine": OURS})
    df = run_cases([case], "cpu", progress=False).set_index("impl")
    assert set(df.index) == {"torch", "sdpa_a", "mine"}
    # ratios are computed from the measured medians, not assumed
    assert df.loc["mine", "vs_best_alt"] == pytest.approx(
        df.loc["sdpa_a", "median_ms"] / df.loc["mine", "median_ms"])
    assert df.loc["mine", "vs_reference"] > 2
    assert df.loc["mine", "tflops"] == pytest.approx(1e9 / (df.loc["mine", "median_ms"] / 1e3) / 1e12)
    table = format_table(df.reset_index())
    assert "device:" in table and "mine" in table


@pytest.mark.parametrize("mode", ac.MODES)
def test_cpu_attention_cases_run_every_implementation_they_list(mode):
    cases = get_cases(["attention"], "cpu", "quick")
    assert {c.params["mode"] for c in cases} == set(ac.MODES)
    case = min((c for c in cases if c.params["mode"] == mode), key=lambda c: c.flops)
    outs = {}
    for name, fn in case.impls.items():
        x = case.make_inputs("cpu")  # fresh inputs per implementation, as the harness does
        fn(x)  # bwd: the first call runs the forward too; the second is the backward alone
        outs[name] = fn(x)
        # every implementation is within float32 rounding of the float64 truth ...
        assert check_error(case, name, x, outs[name]) < 1e-5, name
    assert "torch" in outs and any(name.startswith("sdpa") for name in outs)
    # FlexAttention (compiled) joins the forward where it runs; it has no CPU backward
    assert ("flex" in outs) == (mode == "fwd" and compiled_flex() is not None)
    assert case.flops == (ac.BWD_FACTOR if mode == "bwd" else 1 + ac.BWD_FACTOR if
                          mode == "fwd_bwd" else 1) * ac.attention_flops(1, 8, 512, 512, 64, causal=True)
    # ... and the check notices an output that is 0.1% off
    wrong = tuple(t * 1.001 for t in outs["torch"]) if mode != "fwd" else outs["torch"] * 1.001
    assert check_error(case, "torch", x, wrong) > 1e-4


def test_every_case_declares_its_implementations_and_devices():
    assert get_cases()
    for kernel in areas():
        for device in ("cpu", "cuda"):  # GPU cases are listed without a GPU (asv discovery)
            for case in get_cases([kernel], device, "all"):
                assert set(case.impls) <= set(implementation_names(kernel, device)), case.id
                assert torch.device(device).type in case.devices and case.reference in \
                    implementation_names(kernel, device)
    assert get_cases(["packing"], "cuda") == [] and get_cases(["padding"], "cpu") == []
    assert find_case("packing/ffd-gamma-c2048").params["algorithm"] == "ffd"
    with pytest.raises(ValueError, match="unknown case 'packing/nope'"):
        find_case("packing/nope")


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"), ("NVIDIA H200", "NVIDIA-H200"),
    ("AMD EPYC", "AMD-EPYC"), ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                               "Intel-Xeon-Platinum-8481C")])
def test_machine_names_come_from_the_device(monkeypatch, name, expected):
    from kernelsuite.harness import devices

    monkeypatch.setattr(devices, "device_name", lambda device: name)
    assert devices.machine_name("cpu") == expected


def test_cli_rejects_unknown_kernel(capsys):
    assert cli.main(["bench", "no-such-kernel"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kernelsuite bench: error: unknown kernel(s) ['no-such-kernel']; "
                          "known: ['attention',") and err.count("\n") == 1


def test_find_case_says_why_a_case_cannot_run_here():
    with pytest.raises(ValueError, match=r"'padding/pad-p50-4x64x64' is a cuda case, not one "
                                         r"of the cpu cases.*--gpu-case"):
        find_case("padding/pad-p50-4x64x64", "cpu")
    assert find_case("padding/pad-p50-4x64x64", "cpu", listing="cuda").kernel == "padding"
    # a kernel without cases on the device lists the other device's, not "known: []"
    with pytest.raises(ValueError, match=r"padding has no cpu cases; its cuda cases: "
                                         r"\['padding/"):
        find_case("padding/nope", "cpu")
    with pytest.raises(ValueError, match="case id must be kernel/name"):
        find_case("packing", "cpu")
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 'tpu'"):
        find_case("packing/nope", "tpu")


def test_a_kernel_named_twice_is_benchmarked_once():
    # `bench packing packing` ran every case twice, then failed building the table
    ids = [c.id for c in get_cases(["packing", "packing"], "cpu")]
    assert ids == [c.id for c in get_cases(["packing"], "cpu")] and len(set(ids)) == len(ids)


def test_run_cases_rejects_an_unknown_implementation():
    case = Case(kernel="toy", name="t", params={}, flops=0, bytes=1, make_inputs=lambda d: None,
                impls={"torch": lambda x: None, "mine": lambda x: None},
                roles={"torch": REFERENCE, "mine": OURS})
    with pytest.raises(ValueError, match=r"unknown implementation\(s\) \['nosuch'\] for these "
                                         r"cases on cpu; known: \['mine', 'torch'\]"):
        run_cases([case], "cpu", impls=["mine", "nosuch"], progress=False)


def test_cli_bench_prints_a_table(capsys, tmp_path, monkeypatch):
    # the note's two cold Numba processes are test_numba_compile_is_cached_across_processes'
    monkeypatch.setattr(ac, "numba_first_call_seconds", lambda: (12.5, 0.25))
    csv = tmp_path / "rows.csv"
    assert cli.main(["bench", "attention", "--impl", "sdpa_flash", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "device:" in out and "sdpa_flash" in out and "fwd_bwd" in out
    assert "Numba first call (forward + backward, float32) in a new process: 12.5 s" in out
    assert csv.read_text().count("\n") == len(get_cases(["attention"], "cpu")) + 1


def test_peak_cpu_bytes_sees_an_allocation():
    from kernelsuite.harness.timing import peak_cpu_bytes

    big = peak_cpu_bytes(lambda: torch.ones(50_000_000).sum())  # 200 MB, freed at once
    small = peak_cpu_bytes(lambda: torch.ones(1000).sum())
    if big is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert 150 * 2**20 < big < 400 * 2**20
    assert small < 20 * 2**20


def test_cpu_fraction_is_of_the_measured_matmul_rate_and_memcpy():
    from kernelsuite.harness.devices import cpu_copy_bandwidth, cpu_matmul_flops, peaks

    rate, bandwidth = cpu_matmul_flops(torch.get_num_threads()), cpu_copy_bandwidth()
    assert peaks("cpu") == (rate, bandwidth) and 1e9 < rate < 1e14 and 1e9 < bandwidth < 1e12


@pytest.mark.slow
def test_numba_compile_is_cached_across_processes():
    """cache=True: a second process loads the compiled kernels instead of compiling."""
    from kernelsuite.harness.cases.attention import numba_first_call_seconds

    cold, warm = numba_first_call_seconds()
    assert warm < cold / 5, (cold, warm)


def test_data_cases_run_every_implementation(tmp_path, monkeypatch):
    """The data benchmark's three implementations on its tiny corpus: int64 windows, y is x
    shifted by one token, and our loader matches the reference."""
    from kernelsuite.harness.cases import data as dc

    monkeypatch.setenv("KERNELSUITE_BENCH_DATA", str(tmp_path))
    dc._corpus.cache_clear()
    try:
        (case,) = get_cases(["data"], "cpu", "tiny")
        batch, seq_len = dc.TINY["shape"]
        assert case.tokens == dc.TINY["batches"] * batch * seq_len
        assert case.host_bytes == 2 * 8 * case.tokens  # x and y as int64
        assert case.impls.keys() == {"numba", "torch", "nanogpt_get_batch"}
        inputs = {name: case.make_inputs("cpu") for name in case.impls}
        out = {name: fn(inputs[name]) for name, fn in case.impls.items()}
        for x, y in out.values():
            assert x.shape == y.shape == (batch, seq_len) and x.dtype == torch.int64
            assert torch.equal(x[:, 1:], y[:, :-1])
        assert all(torch.equal(a, b) for a, b in zip(out["numba"], out["torch"]))
        # the check: our loader's batch is the reference's, token for token
        assert check_error(case, "numba", inputs["numba"], out["numba"]) == 0
        assert check_error(case, "nanogpt_get_batch", inputs["nanogpt_get_batch"],
                           out["nanogpt_get_batch"]) is None  # random batches: not compared
        x, y = out["numba"]
        assert check_error(case, "numba", inputs["numba"], (x, y.roll(1, 0))) > 0
        assert len(list((tmp_path / "tiny").glob("bench_*.bin"))) == dc.TINY["shards"]
    finally:
        dc._corpus.cache_clear()


def test_run_cases_takes_each_cases_reference():
    case = Case(kernel="toy", name="sleep", params={}, flops=0.0, bytes=0.0,
                make_inputs=lambda device: None, roles={"python": REFERENCE, "numba": OURS},
                impls={"python": lambda x: time.sleep(0.02), "numba": lambda x: time.sleep(0.002)})
    df = run_cases([case], "cpu", progress=False).set_index("impl")
    assert df.loc["python", "vs_reference"] == 1
    assert df.loc["numba", "vs_reference"] == pytest.approx(
        df.loc["python", "median_ms"] / df.loc["numba", "median_ms"])
    assert df.gbps.isna().all() and df.frac_peak.isna().all()  # no bytes: no bandwidth


def test_packing_cases_compare_equal_packings(monkeypatch):
    from kernelsuite.harness.cases import packing

    monkeypatch.setattr(packing, "N_LENGTHS", 3000)
    cases = get_cases(["packing"], "cpu")
    assert len(cases) == 12 and {c.reference for c in cases} == {"python"}
    for case in cases:
        x = case.make_inputs("cpu")
        cap = case.params["capacity"]
        assert x.size == case.params["n"] == 3000 and x.min() >= 8 and x.max() <= cap
        if case.params["distribution"] == "gamma":
            assert x.min() >= 10 and x.max() <= 500
        else:  # 80% chat turns up to 512, 20% documents up to capacity
            assert 0.15 < (x > 512).mean() < 0.25
        a, b = (case.impls[i](x) for i in ("numba", "python"))
        np.testing.assert_array_equal(a.bin_ids, b.bin_ids)
        assert check_error(case, "numba", x, a) == 0
    a.bin_ids[:2] = a.bin_ids[:2][::-1] + 1  # two sequences in other bins
    assert check_error(case, "numba", x, a) == 2


def test_padding_cases_gpu_only_and_correct_on_a_small_shape(monkeypatch):
    from kernelsuite.harness.cases import padding as bc

    assert get_cases(["padding"], "cpu") == []
    for fraction in bc.PADDING:
        mask = bc.padding_mask(64, 2048, fraction, "cpu")
        assert abs((1 - mask.float().mean()) - fraction) < 0.05
    unpad, pad = bc.padding_cases_for(0.5, "cpu", (4, 16, 8))  # Triton, interpreted
    for case in (unpad, pad):
        x = case.make_inputs("cpu")
        got, want = case.impls["triton"](x), case.impls["torch"](x)
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert torch.equal(g, w) if isinstance(g, torch.Tensor) else g == w


def test_roofline_floors_of_every_gpu_case():
    """Every GPU case has a floor: compute-bound long attention and training steps,
    memory-bound pad/unpad and decode (the KV cache read once), and a loader bound by the
    host link, at the H200's datasheet peaks."""
    from kernelsuite.harness.roofline import floor_seconds, render, table

    df = table("H200")
    assert set(df.kernel) == {"attention", "data", "decode", "padding", "training"}
    assert len(df) == len(get_cases(None, "cuda", "all")) - len(get_cases(["packing"], "cuda",
                                                                           "all"))
    assert df.quick.sum() == len([c for c in get_cases(None, "cuda") if c.kernel != "packing"])
    big = df.set_index("case").loc["fwd-bfloat16-causal-d128-s16384-b1h16"]
    assert big.bound == "compute" and big.floor_ms == pytest.approx(big.gflop / 989)
    assert big.floor_measured_ms == pytest.approx(big.gflop / 790)
    assert set(df[df.kernel == "padding"].bound) == {"memory"}
    assert set(df[df.kernel == "decode"].bound) == {"memory"}
    assert set(df[df.kernel == "data"].bound) == {"host link"}
    assert set(df[df.kernel == "training"].bound) == {"compute"}
    case = Case(kernel="toy", name="t", params={}, flops=2e12, bytes=1e9, host_bytes=1e9,
                make_inputs=lambda d: None)
    assert floor_seconds(case, 1e12, 1e12) == (2.0, "compute")
    assert floor_seconds(case, 1e15, 1e12, 1e8) == (10.0, "host link")
    assert "## attention" in render(df, "H200")
    with pytest.raises(ValueError, match="gpu must be one of"):
        table("A100")
    # the committed table is the registry's as it is now (regenerate: kernelsuite roofline)
    committed = Path(__file__).resolve().parents[1] / "bench" / "report" / "roofline-H200.md"
    assert committed.read_text().strip() == render(df, "H200").strip(), \
        "bench/report/roofline-H200.md is stale: run `kernelsuite roofline --gpu H200`"


def test_cpu_rows_carry_the_floor_beside_the_time():
    case = Case(kernel="toy", name="copy", params={}, flops=0.0, bytes=1e8,
                make_inputs=lambda device: None, impls={"torch": lambda x: time.sleep(0.01)},
                roles={"torch": REFERENCE})
    row = run_cases([case], "cpu", progress=False).iloc[0]
    from kernelsuite.harness.devices import cpu_copy_bandwidth

    assert row.floor_ms == pytest.approx(1e8 / cpu_copy_bandwidth() * 1e3)
    assert row.frac_peak == pytest.approx(row.floor_ms / row.median_ms)
    assert "frac_ceiling" not in row or row.frac_ceiling != row.frac_ceiling  # GPUs only


def test_busy_core_spins_one_cpu_while_open():
    """--busy-core's process: alive and pinned to one CPU inside, gone after."""
    with busy_core() as (cpu, pid):
        deadline = time.monotonic() + 30
        while os.sched_getaffinity(pid) != {cpu} and time.monotonic() < deadline:
            time.sleep(0.05)  # the child pins itself once its interpreter is up
        assert os.sched_getaffinity(pid) == {cpu}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

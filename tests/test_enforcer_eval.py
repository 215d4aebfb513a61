"""Offline evaluation (pipeline/enforcer_eval.py): exact numbers on a hand-made trace, the CLI on a
slice of the real GenTD26 trace (the packaged copy)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gpuledger.config import EnforcerConfig
from pipeline.enforcer_eval import Series, evaluate, pack, table

GPU = 8192


def tiny() -> Series:
    # pod a: 1000 MiB for 5 steps then 2000; pod b: 500 MiB for 5 steps (then gone). 60 s steps.
    return Series(
        pods=["a", "b"],
        step_s=60,
        mem_mib=[[1000.0] * 5 + [2000.0] * 5, [500.0] * 5 + [0.0] * 5],
        busy=[[10.0] * 10, [50.0] * 5 + [0.0] * 5],
        life=[(0, 9), (0, 4)],
        gpu_mem_mib=GPU,
    )


def test_pack_best_fit_by_memory_and_core():
    assert pack([(6, 10), (5, 10), (4, 10), (3, 10), (2, 10)], 10) == 2
    assert pack([(1, 60), (1, 60)], 10) == 2  # core does not fit
    assert pack([(1, 50), (1, 50)], 10) == 1
    assert pack([], 10) == 0
    assert pack([(12, 10)], 10) == 1  # larger than a GPU: one of its own


def test_static_baseline_exact():
    r = evaluate(tiny(), EnforcerConfig(), methods=("static",), cycle_s=300)["static"]
    assert r.reclaimed_gib_h == 0.0 and r.gpu_equivalents == 0.0
    # (5 x 7192 + 5 x 6192 + 5 x 7692) / 8192 / 15 pod-steps
    assert r.slack == 0.8576
    assert (r.violation_rate, r.oom_events, r.changes, r.reversals) == (0.0, 0, 0, 0)
    assert (r.static_gpus_peak, r.gpus_peak, r.gpus_mean, r.packing_gain) == (2, 2, 1.5, 0.0)
    assert r.slice_days == 0.0104


def test_oracle_exact():
    r = evaluate(tiny(), EnforcerConfig(), methods=("oracle",), cycle_s=300)["oracle"]
    # caps = future max from the start: a 2000, b 500 -> (10 x 6192 + 5 x 7692) MiB-steps of 1 min
    assert r.reclaimed_gib_h == round(100380 / 60 / 1024, 3) == 1.634
    assert r.gpu_equivalents == round(100380 / (GPU * 10), 3) == 1.225
    assert r.slack == round(5 * 0.5 / 15, 4)  # a holds 2000 while using 1000 for 5 steps
    assert (r.violation_rate, r.oom_events, r.changes, r.reversals) == (0.0, 0, 0, 0)
    # both fit one GPU at the first cycle, a alone at the second: 2 GPU-cycles against 3 static
    assert (r.gpus_peak, r.gpus_mean, r.packing_gain) == (1, 1.0, 0.3333)


def test_vpa_exact():
    r = evaluate(tiny(), EnforcerConfig(), methods=("vpa",), cycle_s=300)["vpa"]
    # cycle 0: a -> P90 bucket bound 1.05^142 = 1020.9 x 1.15 -> 1280; b -> 1.05^128 x 1.15 -> 768;
    # cores 12 and 60. Step 5: a wants 2000 > 1280: one violation, one OOM; the OOM bump records
    # max(1.2 x 1280, 1380) = 1536, so cycle 5 grows a to 1.05^151 x 1.15 = 1822 -> 2048.
    assert r.violation_rate == round(1 / 15, 6)
    assert r.oom_events == 1
    assert (r.changes, r.reversals) == (5, 1)
    mib_steps = 5 * (GPU - 1280) + 4 * (GPU - 2048) + 4 * (GPU - 768)
    assert mib_steps == 88832
    assert r.reclaimed_gib_h == round(mib_steps / 60 / 1024, 3) == 1.446
    assert r.gpu_equivalents == 1.084
    assert r.slack == round(
        (7192 / 8192 + 4 * 280 / 1280 + 4 * 48 / 2048 + 7692 / 8192 + 4 * 268 / 768) / 15, 4
    )
    assert r.throttled_rate == 0.0
    assert r.oom_per_slice_day == round(1 / (15 * 60 / 86400), 4)
    assert r.changes_per_slice_day == 480.0
    # a: 3 changes (memory down, core down, memory up) in 10 min = 432/day; b: 2 in 5 min = 576/day
    assert r.median_changes_per_slice_day == 504.0


def test_policy_defaults_need_a_day_of_history():
    r = evaluate(tiny(), EnforcerConfig(), methods=("policy",), cycle_s=300)["policy"]
    assert (r.reclaimed_gib_h, r.changes, r.oom_events) == (0.0, 0, 0)


def test_policy_shrink_is_causal_stepped_and_budgeted():
    s = tiny()
    s = replace(s, mem_mib=[[1000.0] * 10, [500.0] * 5 + [0.0] * 5])
    cfg = replace(EnforcerConfig(), shrink_min_history_hours=0, shrink_min_age_hours=0)
    r = evaluate(s, cfg, methods=("policy",), cycle_s=300)["policy"]
    # cycle 0: both slices want 1536 (use 1000 + 512 floor), the 25 % step gives 6144; the pool's
    # budget (10 % of 2 slices, at least 1 per hour) lets only "a" shrink; the next shrink of "a"
    # is 6 h away. Applied from step 1: 9 steps x 2048 MiB. The core caps would drop 100 -> 90
    # (P95 10 % and 50 % < 0.6 x 100, at most 10 points): "a" already changed this hour, so its
    # core may change too; "b" is over the budget.
    assert r.changes == 2
    assert r.reclaimed_gib_h == round(9 * 2048 / 60 / 1024, 3) == 0.3
    assert (r.oom_events, r.reversals, r.demoted) == (0, 0, 0)


def test_policy_grows_after_a_violation():
    # a shrinks to 6144 at cycle 0, then wants 7000 at step 3: HAMi would refuse; the window is an
    # OOM suspect within 1 h of the shrink, so the next cycle rolls it back to 8192 (the cap before
    # the shrink, above the OOM growth round_up(1.2 x 6144) = 7424).
    s = replace(tiny(), mem_mib=[[1000.0] * 3 + [7000.0] * 7, [500.0] * 5 + [0.0] * 5])
    cfg = replace(EnforcerConfig(), shrink_min_history_hours=0, shrink_min_age_hours=0)
    r = evaluate(s, cfg, methods=("policy",), cycle_s=300)["policy"]
    assert r.oom_events == 1
    assert r.violation_rate == round(3 / 15, 6)  # steps 3, 4, 5; grown by the cycle after step 5
    assert (r.changes, r.reversals) == (3, 1)  # memory down, core down, memory back up


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        evaluate(tiny(), EnforcerConfig(), methods=("magic",))


def test_table_has_one_row_per_method():
    res = evaluate(tiny(), EnforcerConfig(), cycle_s=300)
    lines = table(list(res.values())).splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| static | 0.0 | 0.00 | 85.8% | 0.000% | 0 |")


def test_cli_evaluate_on_a_slice_of_the_real_trace(capsys, tmp_path):
    from collector.traces import DATA_DIR
    from gpuledger.cli import main

    png = tmp_path / "frontier.png"
    rc = main(["enforcer", "evaluate", str(DATA_DIR), "--pods", "4", "--hours", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pods"] == 4 and out["hours"] == round(126 * 57 / 3600, 3)
    res = out["results"]
    assert set(res) == {"static", "policy", "vpa", "oracle"}
    assert res["static"]["reclaimed_gib_h"] == 0.0
    assert res["policy"]["changes"] == 0  # 2 h of history: the default needs 24 h
    assert res["oracle"]["violation_rate"] == 0.0
    assert res["oracle"]["reclaimed_gib_h"] > res["vpa"]["reclaimed_gib_h"] * 0.5 > 0
    assert not png.exists()
    rc = main(["enforcer", "evaluate", str(tmp_path), "--pods", "1"])
    assert rc == 2
    assert "missing pod_gpu_duty_cycle.csv.gz" in capsys.readouterr().err


def test_sweep_and_frontier_plot(tmp_path):
    from pipeline.enforcer_eval import plot_frontier, sweep

    s = replace(tiny(), mem_mib=[[1000.0] * 10, [500.0] * 5 + [0.0] * 5])
    swept = sweep(
        s,
        EnforcerConfig(),
        hours=(24.0, 0.0),
        pm=((98.0, 0.15),),
        cycle_s=300,
        pacing=(
            (
                "no budget limit",
                {"shrink_min_history_hours": 0.0, "shrink_min_age_hours": 0.0, "budget_frac": 1.0},
            ),
        ),
    )
    assert [r.extra["label"] for r in swept] == [
        "history 24 h, P98 x 1.15",
        "history 0 h, P98 x 1.15",
        "no budget limit",
    ]
    # a day of history: nothing; none: one slice shrinks (budget); all slices may change: both
    assert [r.reclaimed_gib_h for r in swept] == [0.0, 0.3, round((9 * 2048 + 4 * 2048) / 60 / 1024, 3)]
    png = plot_frontier(evaluate(s, EnforcerConfig(), cycle_s=300), swept, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

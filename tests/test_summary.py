"""summary.ratio_table: one provider's speed over another's, like for like, summarised over sequence lengths."""
import pandas as pd
import pytest

from fa2bench.run.results import load_run
from fa2bench.read.summary import ratio_table
from tests.synthetic import results_frame


def test_ratio_is_the_other_providers_time_over_this_ones_median_over_the_chosen_seqlens():
    frame = results_frame(seqlens=(512, 1024, 2048, 4096))
    table = ratio_table(frame, "fa2", "sdpa-flash", seqlens=(1024, 2048, 4096))
    ok = frame[frame["status"] == "ok"]
    row = table.iloc[0]
    pick = ok[(ok["mode"] == row["mode"]) & (ok["causal"] == row["causal"]) & (ok["headdim"] == row["headdim"])
              & (ok["dtype"] == row["dtype"]) & ok["seqlen_q"].isin([1024, 2048, 4096])]
    ms = pick.pivot_table(index="seqlen_q", columns="provider", values="ms")
    expected = (ms["sdpa-flash"] / ms["fa2"]).dropna()
    assert row["points"] == len(expected) > 0
    assert row["median"] == pytest.approx(expected.median())
    assert row["min"] == pytest.approx(expected.min()) and row["max"] == pytest.approx(expected.max())


def test_points_that_failed_on_either_side_are_left_out():
    frame = results_frame(seqlens=(512, 1024))
    broken = frame.copy()
    broken.loc[broken["provider"] == "sdpa-flash", "status"] = "error"
    assert ratio_table(broken, "fa2", "sdpa-flash").empty
    assert not ratio_table(frame, "fa2", "sdpa-flash").empty


def test_committed_h100_run_has_a_ratio_for_every_mode_causal_headdim_and_dtype():
    table = ratio_table(load_run("results/h100-top"), "fa2", "sdpa-cudnn", seqlens=(2048, 4096, 8192, 16384))
    assert len(table) == 2 * 2 * 3 * 2  # mode x causal x head dim (64, 128, 256) x dtype
    assert (table["median"] > 0).all() and set(table["headdim"]) == {64, 128, 256}

"""Properties over random inputs (hypothesis): the FLOPs model against the reference mask, modelled HBM bytes
against the compulsory floor, parse_ints round trips, compare's verdicts under swapping the runs, and error
text through the CSV store."""
import pandas as pd
import pytest

pytest.importorskip("hypothesis")  # in the test extra; a bare GPU image may lack it
from hypothesis import assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fa2bench.core import providers  # noqa: E402

from fa2bench.read import compare

from fa2bench.core import iomodel
from fa2bench.core.flops import attended_pairs  # noqa: E402
from fa2bench.core.iomodel import compulsory_bytes, hbm_bytes  # noqa: E402
from fa2bench.core.presets import KEY_COLUMNS, Shape, parse_ints  # noqa: E402
from fa2bench.core.reference import causal_mask  # noqa: E402
from fa2bench.run.results import RunWriter, load_run  # noqa: E402

MODELLED = [n for n in providers.names() if iomodel.modelled(n)]
lengths = st.integers(min_value=1, max_value=300)


@settings(max_examples=80, deadline=None)
@given(seqlen_q=lengths, seqlen_k=lengths)
def test_the_causal_pair_count_is_the_reference_masks_count(seqlen_q, seqlen_k):
    masked, live = causal_mask(seqlen_q, seqlen_k, "cpu")
    seen = (~masked).float() * (live if live is not None else 1.0)  # rows that see no key count nothing
    assert attended_pairs(seqlen_q, seqlen_k, causal=True) == int(seen.sum())
    assert attended_pairs(seqlen_q, seqlen_k, causal=False) == seqlen_q * seqlen_k


@settings(max_examples=60, deadline=None)
@given(provider=st.sampled_from(MODELLED), mode=st.sampled_from(["fwd", "bwd", "fwd_bwd"]),
       dtype=st.sampled_from(["fp16", "bf16", "fp32"]), batch=st.integers(1, 4), kv=st.integers(1, 4),
       group=st.integers(1, 4), n=st.integers(1, 2048), nk=st.integers(1, 2048),
       d=st.sampled_from([16, 32, 40, 64, 80, 96, 128, 256]), causal=st.booleans())
@example(provider="fa1", mode="fwd", dtype="fp16", batch=1, kv=1, group=1, n=129, nk=1, d=16, causal=True)
def test_no_model_goes_below_the_compulsory_bytes(provider, mode, dtype, batch, kv, group, n, nk, d, causal):
    """Found by hypothesis: causal with seqlen_q > seqlen_k leaves query rows that see no key, which FA1 never
    reads; the compulsory floor counts only the rows that see a key as read."""
    s = Shape(batch, kv * group, kv, n, nk, d, causal)
    assert hbm_bytes(provider, s, mode, dtype) >= compulsory_bytes(s, mode, dtype)


@given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=12, unique=True))
def test_parse_ints_round_trips_a_list(values):
    assert parse_ints(",".join(map(str, values)), "seqlen") == tuple(values)
    assert parse_ints(", ".join(map(str, values)) + ",", "seqlen") == tuple(values)


@given(st.integers(1, 4096), st.integers(0, 12), st.integers(1, 64), st.integers(0, 40))
def test_parse_ints_ranges_are_doublings_and_steps(lo, doublings, step, steps):
    assert parse_ints(f"{lo}..{lo * 2 ** doublings}", "seqlen") == tuple(lo * 2 ** i for i in range(doublings + 1))
    assert parse_ints(f"{lo}:{lo + step * steps}:{step}", "seqlen") == tuple(range(lo, lo + step * steps + 1, step))


KEY = dict(provider="fa2", mode="fwd", dtype="fp16", batch=1, heads=1, kv_heads=1, seqlen_q=128, seqlen_k=128,
           headdim=64, causal=False)
MIRROR = {"regression": "faster", "faster": "regression", "broken": "fixed", "fixed": "broken", "noise": "noise",
          "same": "same", "not ok": "not ok"}
timings = st.floats(min_value=0.01, max_value=100.0, allow_nan=False)


def one_point(status, ms, spread):
    return pd.DataFrame([{**KEY, "status": status, "error": "", "ms": ms, "ms_p20": ms * (1 - spread),
                          "ms_p80": ms * (1 + spread)}])


def verdicts(a: pd.DataFrame, b: pd.DataFrame, threshold: float) -> tuple[str, str]:
    """The verdict of the point with B against A, and with the runs swapped (through ``compare.verdict`` on
    the row ``compare.compare`` builds; one full comparison is below)."""
    def row(x, y):
        return {**{f"{c}_a": x[c][0] for c in ("status", "ms", "ms_p20", "ms_p80")},
                **{f"{c}_b": y[c][0] for c in ("status", "ms", "ms_p20", "ms_p80")}, "ratio": y["ms"][0] / x["ms"][0]}

    return compare.verdict(row(a, b), threshold), compare.verdict(row(b, a), threshold)


@settings(max_examples=300)
@given(status_a=st.sampled_from(["ok", "ok", "ok", "wrong", "oom", "unsupported", "error"]),
       status_b=st.sampled_from(["ok", "ok", "ok", "wrong", "oom", "unsupported", "error"]),
       ms_a=timings, ms_b=timings, spread_a=st.floats(0, 0.3), spread_b=st.floats(0, 0.3),
       threshold=st.floats(0, 0.5))
def test_compare_verdicts_swap_when_the_runs_swap(status_a, status_b, ms_a, ms_b, spread_a, spread_b, threshold):
    for ratio in (ms_b / ms_a, ms_a / ms_b):  # away from the threshold's edge, where rounding decides
        assume(abs(ratio - 1 - threshold) > 1e-9)
    a, b = one_point(status_a, ms_a, spread_a), one_point(status_b, ms_b, spread_b)
    assume(abs(b["ms_p20"][0] - a["ms_p80"][0]) > 1e-12 and abs(a["ms_p20"][0] - b["ms_p80"][0]) > 1e-12)
    forward, backward = verdicts(a, b, threshold)
    assert backward == MIRROR[forward]


def test_a_full_comparison_swaps_too():
    a, b = one_point("ok", 1.0, 0.01), one_point("ok", 1.3, 0.01)
    assert compare.compare(a, b).table["verdict"][0] == "regression"
    assert compare.compare(b, a).table["verdict"][0] == "faster"
    broken = one_point("oom", float("nan"), 0.0)
    assert (compare.compare(a, broken).table["verdict"][0], compare.compare(broken, a).table["verdict"][0]) == (
        "broken", "fixed")


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80))
def test_error_text_survives_the_csv_store(tmp_path_factory, error):
    run_dir = tmp_path_factory.mktemp("run")
    writer = RunWriter(run_dir)
    writer.append({**KEY, "status": "error", "error": error})
    writer.append({**KEY, "seqlen_q": 256, "status": "error", "error": f'"{error}", then, more\n"'})
    frame = load_run(run_dir)  # from the CSV: no parquet yet
    assert list(frame["error"]) == [error, f'"{error}", then, more\n"']
    assert list(frame.columns[:len(KEY_COLUMNS)]) == list(KEY_COLUMNS)

"""Sweep options as data: keywords, command-line options and sweep files share fields and one-line errors."""
import dataclasses
import json

import pytest
from typer.testing import CliRunner

from fa2bench.core import config
from fa2bench.cli import app
from fa2bench.core.presets import PRESETS, SpecError
from fa2bench.run.point import RunOptions
from fa2bench.run.results import load_run
from tests.synthetic import REPO

SMOKE = PRESETS["smoke"]


@pytest.mark.parametrize("value", ["512..2048", "512,1024,2048", [512, 1024, 2048], (512, 1024, 2048)])
def test_a_list_field_reads_text_or_numbers_alike(value):
    assert config.spec_from({"seqlen": value}, SMOKE).seqlens == (512, 1024, 2048)


def test_fields_override_the_base_and_pairs_replace_each_other():
    spec = config.spec_from({"preset": "paper", "batch": 2, "heads": "4", "kv_heads": [2], "causal": "on",
                             "dtype": "fp16,bf16", "mode": ["fwd"], "provider": "fa2"}, SMOKE)
    assert (spec.seqlens, spec.batch, spec.tokens, spec.heads, spec.hidden) == (
        PRESETS["paper"].seqlens, (2,), None, (4,), None)
    assert (spec.kv_heads, spec.causal, spec.dtypes, spec.modes, spec.providers) == (
        (2,), (True,), ("fp16", "bf16"), ("fwd",), ("fa2",))
    assert config.spec_from({"tokens": 4096, "causal": False}, SMOKE).batch == ()
    assert config.spec_from({"causal": "both"}, SMOKE).causal == (False, True)


@pytest.mark.parametrize("options, message", [
    ({"seqlen": [1.5]}, "--seqlen: expected whole numbers"),
    ({"seqlen": [True]}, "--seqlen: expected whole numbers"),
    ({"tokens": "many"}, "--tokens: expected a whole number"),
    ({"causal": "sometimes"}, "--causal: expected off, on, both"),
    ({"mode": ["train"]}, "--mode: unknown 'train'"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"heads": [4], "hidden": 2048}, "at most one of --heads and --hidden"),
    ({"seq-len": [1]}, "unknown field 'seq-len'"),
])
def test_bad_fields_are_one_line_spec_errors(options, message):
    with pytest.raises(SpecError, match=message) as caught:
        config.spec_from(options, SMOKE)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("options, message", [
    ({"check": "yes"}, "--check: expected true or false"),
    ({"warmup_ms": -1}, "--warmup-ms must be >= 0"),
    ({"peak_tflops": 0}, "--peak-tflops must be a positive number"),
    ({"rep_ms": "fast"}, "must be numbers"),
    ({"isolate": "yes"}, "--isolate: expected true or false"),
    ({"point_timeout": 0}, "--point-timeout must be a positive number of seconds"),
    ({"point_timeout": "soon"}, "--point-timeout must be a positive number of seconds"),
])
def test_run_options_are_validated(options, message):
    with pytest.raises(SpecError, match=message):
        config.run_options(options)


def test_run_options_have_the_clis_defaults():
    assert config.run_options({}) == {"check": True, "warmup_ms": 25.0, "rep_ms": 100.0, "peak_tflops": None,
                                      "ceilings": True, "isolate": None, "point_timeout": 600.0, "timer": "auto"}


def test_a_toml_file_reads_with_dashes_or_underscores_and_an_optional_sweep_table(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\nseqlen = [64, 128]\nkv-heads = 1\nrep_ms = 5\ncausal = "on"\n')
    assert config.load(path) == {"seqlen": [64, 128], "kv_heads": 1, "rep_ms": 5, "causal": "on"}


@pytest.mark.parametrize("name, text, message", [
    ("bad.toml", "seqlen = [64,\n", "is not valid TOML"),
    ("field.toml", "colour = 'red'\n", "field.toml: unknown field 'colour'"),
    ("s.json", "{}", "use a .toml, .yaml or .yml file"),
])
def test_bad_sweep_files_are_one_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(SpecError, match=message) as caught:
        config.load(tmp_path / name)
    assert "\n" not in str(caught.value)


def test_a_yaml_file_reads_when_pyyaml_is_installed(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("seqlen: [64, 128]\nprovider: fa2\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(SpecError, match="needs PyYAML"):
            config.load(path)
    else:
        assert config.load(path) == {"seqlen": [64, 128], "provider": "fa2"}


def test_the_command_line_wins_over_the_file():
    merged = config.merge({"seqlen": [64], "tokens": 4096, "hidden": 512, "mode": "fwd"},
                          {"batch": "2", "seqlen": "32"})
    assert merged == {"seqlen": "32", "batch": "2", "hidden": 512, "mode": "fwd"}


def test_sweep_config_runs_the_files_sweep_and_reports_bad_files_in_one_line(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('seqlen = [16]\nheaddim = [16]\nbatch = [1]\nheads = [2]\ncausal = "off"\nmode = ["fwd"]\n'
                    'dtype = ["fp32"]\nprovider = ["torch-eager"]\nrep-ms = 1\nwarmup-ms = 0\n')
    result = CliRunner().invoke(app, ["sweep", "--config", str(path), "--seqlen", "16,32",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    frame = load_run(tmp_path / "run")
    assert frame["seqlen_q"].tolist() == [16, 32] and set(frame["provider"]) == {"torch-eager"}
    path.write_text("seqlen = 'lots'\n")
    bad = CliRunner().invoke(app, ["sweep", "--config", str(path), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--seqlen: cannot read 'lots'" in bad.output and "Traceback" not in bad.output


def _sweep_file(path):
    """A sweep file's options and the sweep they resolve to."""
    options = config.load(path)
    return options, config.spec_from({k: v for k, v in options.items() if k not in config.RUN_OPTIONS}, SMOKE)


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.toml")), ids=lambda p: p.name)
def test_the_committed_sweep_files_are_valid(path):
    options, spec = _sweep_file(path)
    config.run_options(options)
    assert spec.points()


@pytest.mark.parametrize("name, run", [("fa3-accept", "h200-fa3-accept-3"), ("fa3-accept", "h100-fa3-accept-1"),
                                       ("fa3-fwd-cudnn", "h100-fa3-fwd-9"), ("fa3-bwd-cudnn", "h100-fa3-bwd-8"),
                                       ("decode-peers", "h200-decode-v6"), ("decode-peers", "h100-decode-5"),
                                       ("variants-peers", "h100-variants-11")])
def test_the_sweep_files_are_the_sweeps_the_committed_runs_ran(name, run):
    """The sweep files of the issues' runs resolve to the sweeps their committed runs recorded in meta.json, so
    ``fa2bench sweep --config sweeps/NAME.toml`` repeats one on another GPU."""
    options, spec = _sweep_file(REPO / "sweeps" / f"{name}.toml")
    meta = json.loads((REPO / "results" / run / "meta.json").read_text())
    assert json.loads(json.dumps(dataclasses.asdict(spec))) == meta["sweep"]
    ran = RunOptions.of(meta["options"]["device"], {**config.run_options(options), "isolate": True})
    fields = ("check", "warmup_ms", "rep_ms", "peak_tflops", "point_timeout_s", "timer")  # what a sweep file sets
    assert {f: getattr(ran, f) for f in fields} == {f: meta["options"][f] for f in fields}


@pytest.mark.parametrize("spec", [*PRESETS.values(), config.spec_from(
    {"seqlen": [64], "seqlen_k": [128], "batch": [1, 2], "heads": [4], "kv_heads": [1, 2], "causal": "on",
     "dtype": ["tf32"], "mode": ["fwd"], "provider": ["fa2", "naive"]}, SMOKE)])
# The decode preset sets seqlens_k and kv_heads, the variants preset kv_heads, and the default preset its providers,
# which the fields of a spec without them (seqlen_k = seqlen, kv_heads = heads, every provider) cannot unset; a sharded
# sweep names its providers and shapes explicitly on the ranks' command line, so this never reaches a real run.
@pytest.mark.parametrize("base", [p for p in PRESETS if p not in ("decode", "default", "variants")])
def test_a_specs_fields_describe_it_on_any_base(spec, base):
    # what a sharded sweep's ranks rebuild; "every provider here" (no list) has no field, so a base with its own
    # list (the default preset) keeps it: the launcher always passes the resolved list
    expected = spec if spec.providers or not PRESETS[base].providers else spec.replace(
        providers=PRESETS[base].providers)
    assert config.spec_from(config.spec_fields(spec), base) == expected
    with_providers = config.spec_from(config.spec_fields(spec, ("naive",)), base)
    assert with_providers.providers == ("naive",)


def test_fields_as_command_line_arguments():
    args = config.command_line({"seqlen": (64, 97), "causal": "both", "check": False, "isolate": True,
                                "rep_ms": 2.0, "out": REPO / "x", "provider": ["fa2"]})
    assert args == ["--seqlen", "64,97", "--causal", "both", "--no-check", "--isolate", "--rep-ms", "2.0",
                    "--out", str(REPO / "x"), "--provider", "fa2"]
    assert config.command_line({"causal": True}) == ["--causal", "on"]

"""Sweep options as data: keyword arguments of ``fa2bench.sweep``, the options of ``fa2bench sweep`` and sweep
files (``fa2bench sweep --config FILE``, TOML, or YAML when PyYAML is installed) share one set of fields and
one validation, so a bad value reads the same wherever it came from (``SpecError``, one line).

Fields (a file may spell them with dashes, as on the command line):

- ``preset``: a name in ``presets.PRESETS`` (default, quick, paper, smoke, decode, ...), the base the other
  fields override;
- shape lists ``seqlen``, ``seqlen_k``, ``headdim``, ``batch``, ``heads``, ``kv_heads``: a list of whole numbers,
  one number, or text as on the command line (``"512..16384"``, ``"64:256:64"``, ``"64,128"``);
- ``tokens``, ``hidden``: one number (batch = tokens // seqlen, heads = hidden // headdim);
- ``causal``: ``"off"``, ``"on"``, ``"both"`` or a boolean;
- decode only: ``page_size`` (whole numbers, 0 for a contiguous cache) and ``ragged`` (like ``causal``);
- ``variant``: attention variants, a list or comma-separated spellings (``fa2bench.core.variants``: dense,
  window4096, softcap50, alibi, docs, window4096+softcap50, ...);
- ``max_kv_tokens``: one number, shapes with batch * seqlen_k above it are left out (the decode preset's cap;
  0: no cap);
- ``dtype``, ``mode``, ``provider``: a list of names or comma-separated text;
- run options ``check``, ``warmup_ms``, ``rep_ms``, ``peak_tflops``, ``ceilings``, ``isolate`` (None: on with a
  GPU, off without one), ``point_timeout`` (seconds, with isolation only), ``timer`` (auto, plain or graph:
  ``fa2bench.run.timing``); and ``out``, ``resume``, ``extend``;
- booleans (``check``, ``ceilings``, ``isolate``, ``resume``, ``extend``) must be booleans: the text "no" (or
  any other value) is an error, never read as true (``flag``);
- ``gpus``: a number or ``"all"``: shard the points over that many GPUs under torchrun (``fa2bench.distributed``).

A sharded sweep's ranks get the resolved sweep back as ``fa2bench sweep`` arguments (``spec_fields`` and
``command_line``), so each rank resolves exactly the sweep that was planned.

Sizes no machine can hold are refused here too (``memory.check_sizes``), before anything runs.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

from fa2bench.core.flops import ALL_MODES
from fa2bench.core.memory import check_sizes
from fa2bench.core.presets import DTYPES, TIMERS, SpecError, SweepSpec, parse_ints, parse_names

INT_LISTS = {"seqlen": "seqlens", "seqlen_k": "seqlens_k", "headdim": "headdims", "batch": "batch",
             "heads": "heads", "kv_heads": "kv_heads"}
NAME_LISTS = {"dtype": "dtypes", "mode": "modes", "provider": "providers"}
CAUSAL = {"off": (False,), "on": (True,), "both": (False, True)}
RUN_OPTIONS = {"check": True, "warmup_ms": 25.0, "rep_ms": 100.0, "peak_tflops": None, "ceilings": True,
               "isolate": None, "point_timeout": 600.0, "timer": "auto"}
FIELDS = ("preset", *INT_LISTS, "tokens", "hidden", "causal", "page_size", "ragged", "variant", "max_kv_tokens",
          *NAME_LISTS, *RUN_OPTIONS, "out", "resume", "extend",
          "gpus")


def _option(name: str) -> str:
    return name.replace("_", "-")


def normalise(options: Mapping[str, Any], where: str = "") -> dict:
    """``options`` with dashes read as underscores and None values dropped; an unknown field is a SpecError."""
    out = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise SpecError(f"{where}unknown field {key!r}; fields: {', '.join(_option(f) for f in FIELDS)}")
        if value is not None:
            out[name] = value
    return out


def flag(name: str, value) -> bool:
    """A boolean option, strictly: True or False (a TOML/YAML boolean, a CLI flag); text such as "no" or a number
    is a SpecError, never read as true."""
    if isinstance(value, bool):
        return value
    raise SpecError(f"--{_option(name)}: expected true or false, got {value!r}")


def out_folder(out) -> Path | None:
    """A results folder named by ``--out`` (None: not given, the caller's default); an empty name (or ".", which
    is how a shell's "" reaches a Path) is a SpecError, never the current directory."""
    if out is not None and str(out).strip() in ("", "."):
        raise SpecError("--out is empty: name a folder for the results, or leave --out out for a new one under "
                        "results/")
    return None if out is None else Path(out)


def _ints(name: str, value) -> tuple[int, ...]:
    if isinstance(value, str):
        return parse_ints(value, _option(name))
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise SpecError(f"--{_option(name)}: expected whole numbers, got {value!r}")
    return parse_ints(",".join(map(str, values)), _option(name))


def _int(name: str, value) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"--{_option(name)}: expected a whole number, got {value!r}")
    return value


def _names(name: str, value, allowed: tuple[str, ...]) -> tuple[str, ...]:
    text = value if isinstance(value, str) else ",".join(map(str, value if isinstance(value, (list, tuple))
                                                             else [value]))
    return parse_names(text, _option(name), allowed)


def _causal(value, name: str = "causal") -> tuple[bool, ...]:
    if isinstance(value, bool):
        return (value,)
    key = getattr(value, "value", value)  # a CLI Enum
    if key not in CAUSAL:
        raise SpecError(f"--{name}: expected off, on, both or a boolean, got {value!r}")
    return CAUSAL[key]


def _page_sizes(value) -> tuple[int, ...]:
    """Page sizes: whole numbers, 0 standing for a contiguous cache (parse_ints takes positive ones only)."""
    text = value if isinstance(value, str) else ",".join(map(str, value if isinstance(value, (list, tuple))
                                                             else [value]))
    parts = [p.strip() for p in text.split(",") if p.strip()]
    zero = (0,) if "0" in parts else ()
    rest = ",".join(p for p in parts if p != "0")
    return zero + (parse_ints(rest, "page-size") if rest else ())


def _variant_list(value) -> tuple[str, ...]:
    from fa2bench.core import variants

    text = value if isinstance(value, str) else ",".join(map(str, value if isinstance(value, (list, tuple))
                                                             else [value]))
    try:
        return variants.parse_list(text)
    except variants.VariantError as exc:
        raise SpecError(f"--variant: {exc}") from None


def spec_from(options: Mapping[str, Any], base: SweepSpec | str) -> SweepSpec:
    """The sweep ``options`` describe, on top of ``base`` (a spec, or a preset name that ``preset`` replaces)."""
    from fa2bench.core import providers
    options = normalise(options)
    if "preset" in options or isinstance(base, str):
        base = SweepSpec.from_name(str(getattr(options.get("preset"), "value", options.get("preset")) or base))
    spec = base
    for pair in (("batch", "tokens"), ("heads", "hidden")):
        if all(name in options for name in pair):
            raise SpecError(f"give at most one of --{pair[0]} and --{pair[1]}")
    changes: dict[str, Any] = {INT_LISTS[k]: _ints(k, v) for k, v in options.items() if k in INT_LISTS}
    if "batch" in options:
        changes["tokens"] = None
    if "tokens" in options:
        changes.update(batch=(), tokens=_int("tokens", options["tokens"]))
    if "heads" in options:
        changes["hidden"] = None
    if "hidden" in options:
        changes.update(heads=(), hidden=_int("hidden", options["hidden"]))
    if "causal" in options:
        changes["causal"] = _causal(options["causal"])
    if "ragged" in options:
        changes["ragged"] = _causal(options["ragged"], "ragged")
    if "page_size" in options:
        changes["page_sizes"] = _page_sizes(options["page_size"])
    if "variant" in options:
        changes["variants"] = _variant_list(options["variant"])
    if "max_kv_tokens" in options:
        changes["max_kv_tokens"] = _int("max_kv_tokens", options["max_kv_tokens"]) or None  # 0: no cap
    allowed = {"dtype": DTYPES, "mode": ALL_MODES, "provider": providers.names()}
    for key, field in NAME_LISTS.items():
        if key in options:
            changes[field] = _names(key, options[key], allowed[key])
    spec = dataclasses.replace(spec, **changes)
    spec.validate()
    check_sizes(spec.shapes())
    return spec


def run_options(options: Mapping[str, Any]) -> dict:
    """The run options among ``options`` with their defaults, validated: check, warmup_ms, rep_ms, peak_tflops,
    ceilings, isolate (None until the device is known), point_timeout, timer."""
    options = normalise(options)
    out = {k: options.get(k, default) for k, default in RUN_OPTIONS.items()}
    for name in ("check", "ceilings", "isolate"):
        if out[name] is not None:
            out[name] = flag(name, out[name])
    out["timer"] = str(getattr(out["timer"], "value", out["timer"]))
    if out["timer"] not in TIMERS:
        raise SpecError(f"--timer: expected one of {', '.join(TIMERS)}, got {out['timer']!r}")
    try:
        warmup, rep = float(out["warmup_ms"]), float(out["rep_ms"])
        peak = None if out["peak_tflops"] is None else float(out["peak_tflops"])
    except (TypeError, ValueError):
        raise SpecError("--warmup-ms, --rep-ms and --peak-tflops must be numbers") from None
    if peak is not None and not (peak > 0 and math.isfinite(peak)):
        raise SpecError("--peak-tflops must be a positive number")
    if not (warmup >= 0 and rep > 0):
        raise SpecError("--warmup-ms must be >= 0 and --rep-ms > 0")
    try:
        timeout = float(out["point_timeout"])
    except (TypeError, ValueError):
        timeout = math.nan
    if isinstance(out["point_timeout"], bool) or not (timeout > 0 and math.isfinite(timeout)):
        raise SpecError("--point-timeout must be a positive number of seconds")
    return {**out, "warmup_ms": warmup, "rep_ms": rep, "peak_tflops": peak, "point_timeout": timeout}


def spec_fields(spec: SweepSpec, providers: tuple[str, ...] | None = None) -> dict:
    """The fields that describe ``spec`` whatever the base (``spec_from(spec_fields(spec), any preset)`` is
    ``spec``), with ``providers`` (default: the spec's) as its provider list. An empty list (every provider
    available here) has no field: on a base with its own list (the default preset) pass ``providers``."""
    causal = next((k for k, v in CAUSAL.items() if v == tuple(spec.causal)), None)
    if causal is None:
        raise SpecError(f"causal {spec.causal!r} has no option value (off, on or both)")
    fields = {"seqlen": spec.seqlens, "headdim": spec.headdims, "causal": causal, "dtype": spec.dtypes,
              "mode": spec.modes, "provider": providers if providers is not None else spec.providers}
    fields.update({"batch": spec.batch} if spec.batch else {"tokens": spec.tokens})
    fields.update({"heads": spec.heads} if spec.heads else {"hidden": spec.hidden})
    fields.update({k: v for k, v in (("seqlen_k", spec.seqlens_k), ("kv_heads", spec.kv_heads)) if v})
    fields.update(page_size=spec.page_sizes, variant=spec.variants, max_kv_tokens=spec.max_kv_tokens or 0,
                  ragged=next(k for k, v in CAUSAL.items() if v == tuple(spec.ragged)))
    return {k: v for k, v in fields.items() if v not in ((), None)}


def command_line(options: Mapping[str, Any]) -> list[str]:
    """``options`` (fields) as ``fa2bench sweep`` arguments: ``--seqlen 64,97``, ``--no-check``, ``--out DIR``."""
    args: list[str] = []
    for key, value in normalise(options).items():
        value = getattr(value, "value", value)  # a CLI Enum
        if isinstance(value, bool) and key != "causal":
            args.append(f"--{_option(key)}" if value else f"--no-{_option(key)}")
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(getattr(v, "value", v)) for v in value)
        args += [f"--{_option(key)}", str(value)]
    return args


def merge(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict:
    """``given`` (the command line) over ``base`` (a sweep file): a field given replaces the file's, and
    --batch/--tokens (like --heads/--hidden) replace each other, so one given drops the file's other."""
    given = normalise(given)
    out = dict(normalise(base))
    for pair in (("batch", "tokens"), ("heads", "hidden")):
        if set(pair) & set(given):
            out = {k: v for k, v in out.items() if k not in pair}
    return {**out, **given}


def load(path: str | Path) -> dict:
    """The fields of a sweep file (TOML; YAML when PyYAML is installed), normalised; errors are one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"sweep file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        data = _yaml(text, path)
    elif path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"sweep file {path} is not valid TOML: {exc}") from None
    else:
        raise SpecError(f"sweep file {path}: use a .toml, .yaml or .yml file")
    if not isinstance(data, dict):
        raise SpecError(f"sweep file {path} must hold a table of fields, e.g. seqlen = [1024, 4096]")
    return normalise(data.get("sweep", data) if isinstance(data.get("sweep"), dict) else data, f"{path}: ")


def _yaml(text: str, path: Path):
    try:
        import yaml
    except ImportError:
        raise SpecError(f"sweep file {path}: reading YAML needs PyYAML (pip install pyyaml); "
                        "or write the file as TOML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"sweep file {path} is not valid YAML: {' '.join(str(exc).split())}") from None


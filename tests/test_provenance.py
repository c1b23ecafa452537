"""Every folder under results/ that holds measurements has the meta.json its tool wrote, or is listed as legacy
in results/README.md (and then feeds no README number)."""
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def legacy() -> set[str]:
    return set(re.findall(r"^- legacy: `([^`]+)`", (RESULTS / "README.md").read_text(), re.M))


def has_provenance(folder: Path) -> bool:
    """A run folder with its meta.json, or a collection whose every sub-folder is one."""
    if (folder / "meta.json").exists():
        return True
    subs = [p for p in folder.iterdir() if p.is_dir()]
    return bool(subs) and all(has_provenance(p) for p in subs)


def test_every_results_folder_has_a_meta_json_or_is_legacy():
    folders = [p for p in RESULTS.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
               and not p.name.endswith("-cpu")]
    missing = sorted(p.name for p in folders if not has_provenance(p) and p.name not in legacy())
    assert not missing, f"no meta.json (add one through the tool, or list as legacy in results/README.md): {missing}"


def test_the_legacy_list_names_real_folders_without_meta():
    names = legacy()
    assert "io-h100-d128" in names
    for name in names:
        assert (RESULTS / name).is_dir(), f"results/README.md lists a legacy folder that is not there: {name}"
        assert not has_provenance(RESULTS / name), f"{name} has a meta.json now: drop it from the legacy list"


def test_a_folder_without_meta_is_caught(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.csv").write_text("x\n")
    assert not has_provenance(tmp_path / "run")
    (tmp_path / "run" / "meta.json").write_text("{}")
    assert has_provenance(tmp_path / "run")

"""Every number the README and docs/ quote from results/ sits in a marked block that the suite recomputes from the
committed runs (``fa2bench.docnumbers``); these tests fail when text and data disagree."""
import re
from pathlib import Path

import pytest

from fa2bench import docnumbers
from fa2bench.docnumbers.variants import variants_versus

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_every_block_is_quoted_in_the_readme_or_docs():
    quoted = {name for path in DOCS for name, _ in docnumbers.blocks(path.read_text())}
    assert set(docnumbers.BLOCKS) <= quoted


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_marked_blocks_agree_with_the_committed_runs(path):
    text = path.read_text()
    links = docnumbers.links_from(path, ROOT)
    assert docnumbers.stale(text, ROOT / "results", links) == [], f"run `fa2bench report --readme`, commit {path.name}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_results_link_resolves_from_its_file(path):
    """A link to a run, in a block or in prose, opens that run's folder from where the file sits (docs/ links go
    up one level)."""
    targets = re.findall(r"\]\(((?:\.\./)*results/[^)#\s]*)\)", path.read_text())
    missing = sorted({t for t in targets if not (path.parent / t).exists()})
    assert targets or path.name != "README.md"
    assert missing == [], f"{path.name}: links that do not resolve: {missing[:5]}"


def test_links_from_the_readme_and_from_docs():
    assert docnumbers.links_from(ROOT / "README.md", ROOT) == ""
    assert docnumbers.links_from(ROOT / "docs" / "variants.md", ROOT) == "../"


def test_an_edited_number_is_caught(readme):
    """A changed digit in a copy of the README (inside a table and inside a sentence) makes the check fail."""
    body = dict(docnumbers.blocks(readme))
    for name, old in (("top-table", "| 411 |"), ("top-versus", "73%")):
        assert old in body[name]
        edited = readme.replace(body[name], body[name].replace(old, old.replace("1", "2").replace("7", "8"), 1))
        assert docnumbers.stale(edited, ROOT / "results") == [name]


def test_render_restores_an_edited_block(readme):
    edited = readme.replace("16,384 tokens per step", "16k tokens per step")
    assert edited != readme
    assert docnumbers.render(edited, ROOT / "results") == readme


def test_an_unknown_block_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown block 'nope'"):
        docnumbers.render("<!-- fa2bench:begin nope -->1<!-- fa2bench:end nope -->", ROOT / "results")


def test_no_block_reads_a_legacy_folder():
    """The blocks read only runs with a tool-written meta.json (legacy folders are listed in results/README.md)."""
    source = "".join(p.read_text() for p in Path(docnumbers.__file__).parent.glob("*.py"))
    runs = set(re.findall(r'"(h[12]00-[\w-]+|io-[\w-]+|ncu-[\w-]+)"', source))
    assert runs and all((ROOT / "results" / run / "meta.json").exists() for run in runs)


def test_a_run_cut_short_is_compared_by_its_whole_cells_only():
    """``variants_versus`` quotes a cell only where the run timed every point the run before it did: the d128 cells
    of the cut-short ``h100-variants-10`` are whole, its head dim 256 cells are not, and asking for them is an error."""
    assert "docs bwd" in variants_versus(ROOT / "results", run="h100-variants-10", headdims=(128,))
    with pytest.raises(ValueError, match="only whole cells"):
        variants_versus(ROOT / "results", run="h100-variants-10", headdims=(256,))

"""spec/ is self-contained: the requirement texts ship with it, and every ID they define is
encoded in the TOML (issue 10: spec/README pointed at a file outside the repository)."""

import re
from pathlib import Path

from pythoncoder.spec import DEFAULT_SPEC_DIR, load_spec

SPEC = Path(DEFAULT_SPEC_DIR)


def test_every_requirement_of_the_text_is_encoded():
    text = (SPEC / "requirements.md").read_text()
    ids = set(re.findall(r"\*\*([A-Z]+-\d+[a-z]?)\b", text))
    assert len(ids) >= 30  # the resolved design defines dozens of requirements
    missing = ids - set(load_spec())
    assert not missing, f"requirements.md IDs missing from spec/*.toml: {sorted(missing)}"


def test_no_link_leaves_the_repository():
    root = SPEC.parent
    for doc in [SPEC / "README.md", SPEC / "requirements.md", root / "README.md"]:
        text = doc.read_text()
        assert "../shared" not in text, doc
        for target in re.findall(r"\]\(([^)#:]+)\)", text):  # relative markdown links
            assert (doc.parent / target).resolve().exists(), f"{doc}: broken link {target}"


def test_spec_dir_is_found_outside_a_checkout(tmp_path, monkeypatch):
    """A wheel install ships spec/ as data files; PYTHONCODER_SPEC_DIR overrides."""
    import pythoncoder.spec as spec

    (tmp_path / "x.toml").write_text("")
    monkeypatch.setenv("PYTHONCODER_SPEC_DIR", str(tmp_path))
    assert spec.find_spec_dir() == tmp_path
    monkeypatch.delenv("PYTHONCODER_SPEC_DIR")
    monkeypatch.setattr(spec, "__file__", str(tmp_path / "site" / "pythoncoder" / "spec.py"))
    share = tmp_path / "prefix" / "share" / "pythoncoder" / "spec"
    share.mkdir(parents=True)
    (share / "a.toml").write_text("")
    monkeypatch.setattr(spec.sys, "prefix", str(tmp_path / "prefix"))
    assert spec.find_spec_dir() == share

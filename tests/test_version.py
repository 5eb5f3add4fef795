"""The code version every output records: it changes when any source file does."""

import craft
import craft.version as version


def _fresh(monkeypatch, package, checkout):
    monkeypatch.setattr(version, "PACKAGE", package)
    monkeypatch.setattr(version, "CHECKOUT", checkout)
    for f in (version.source_digest, version.code_version, version.commit):
        f.cache_clear()


def test_the_code_version_is_the_release_and_a_digest_of_the_sources(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "craft" / "data").mkdir(parents=True)
    (checkout / "rules").mkdir()
    (checkout / "craft" / "a.py").write_text("x = 1\n")
    (checkout / "craft" / "data" / "base.yaml").write_text("k: v\n")
    (checkout / "Snakefile").write_text("rule all:\n")
    (checkout / "rules" / "r.smk").write_text("rule r:\n")
    try:
        _fresh(monkeypatch, checkout / "craft", checkout)
        first = version.code_version()
        assert first.startswith(craft.__version__ + "+") and len(first.split("+")[1]) == 12
        (checkout / "craft" / "__pycache__").mkdir()
        (checkout / "craft" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
        _fresh(monkeypatch, checkout / "craft", checkout)
        assert version.code_version() == first  # compiled files are not the source
        for changed in ("craft/data/base.yaml", "rules/r.smk", "Snakefile", "craft/a.py"):
            (checkout / changed).write_text((checkout / changed).read_text() + "# edit\n")
            _fresh(monkeypatch, checkout / "craft", checkout)
            assert version.code_version() != first, changed
            first = version.code_version()
    finally:
        _fresh(monkeypatch, version.Path(version.__file__).resolve().parent,
               version.Path(version.__file__).resolve().parents[1])  # fmt: skip


def test_the_commit_is_read_from_the_checkouts_git_folder(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    git = checkout / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (checkout / "craft").mkdir()
    try:
        _fresh(monkeypatch, checkout / "craft", checkout)
        (git / "HEAD").write_text("ref: refs/heads/main\n")
        (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
        assert version.commit() == "a" * 40
        (git / "refs" / "heads" / "main").unlink()  # after `git gc`: in packed-refs
        (git / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
        _fresh(monkeypatch, checkout / "craft", checkout)
        assert version.commit() == "b" * 40
        (git / "HEAD").write_text("c" * 40 + "\n")  # detached
        _fresh(monkeypatch, checkout / "craft", checkout)
        assert version.commit() == "c" * 40
        import shutil

        shutil.rmtree(git)  # installed, not a checkout
        _fresh(monkeypatch, checkout / "craft", checkout)
        assert version.commit() is None
    finally:
        _fresh(monkeypatch, version.Path(version.__file__).resolve().parent,
               version.Path(version.__file__).resolve().parents[1])  # fmt: skip

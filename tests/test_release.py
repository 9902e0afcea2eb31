"""build/release.py: the release folder a user deploys from."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "build"))

import release  # noqa: E402  (build/release.py)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return release.release("registry.example.org/team", str(tmp_path_factory.mktemp("rel")))


def test_the_folder_is_named_by_the_projects_version_and_has_everything(folder):
    version = release.spec.project_version()
    assert os.path.basename(folder) == f"ai-load-balancer-{version}"
    assert sorted(os.listdir(folder)) == sorted([
        *release.MODULES, "SHA256SUMS", "oci", "manifests", "check-config.pyz", "RESULTS.md",
        "CHANGELOG.md", "LICENSE", "README.md"])


def test_checksums_match_the_modules(folder):
    with open(os.path.join(folder, "SHA256SUMS")) as f:
        listed = dict(reversed(line.split()) for line in f)
    assert set(listed) == set(release.MODULES)
    for name, digest in listed.items():
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        assert data[:4] == b"\0asm" and hashlib.sha256(data).hexdigest() == digest


def test_manifests_point_at_the_pushed_image_and_the_oci_tag_matches(folder):
    tag = f"{release.spec.project_version()}-higress"
    with open(os.path.join(folder, "oci", "index.json")) as f:
        index = json.load(f)
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == tag
    urls = []
    for name in os.listdir(os.path.join(folder, "manifests")):
        with open(os.path.join(folder, "manifests", name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc and doc.get("kind") == "WasmPlugin":
                    urls.append(doc["spec"]["url"])
    assert len(urls) == 3
    assert set(urls) == {f"oci://registry.example.org/team/ai-load-balancer:{tag}"}


def test_the_checker_runs_alone_on_a_shipped_manifest(folder, tmp_path):
    manifest = os.path.join(folder, "manifests", "wasmplugin-prefix-cache.yaml")
    # -I -S: no site-packages, so PyYAML and the plugin come from the .pyz itself
    pyz = os.path.join(folder, "check-config.pyz")
    result = subprocess.run([sys.executable, "-I", "-S", pyz, manifest], capture_output=True,
                            text=True, cwd=tmp_path, env={"PATH": os.environ["PATH"]},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lb_policy=prefix_cache" in result.stdout


def test_a_version_without_a_changelog_section_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="CHANGELOG.md has no '## 9.9.9' section"):
        release.release("registry.example.org/team", str(tmp_path), version="9.9.9")

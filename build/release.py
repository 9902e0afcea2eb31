"""Builds a release folder: everything a user deploys, for the version in
pyproject.toml (the one place it lives).

    .venv/bin/python build/release.py --registry ghcr.io/acme
    # -> release/ai-load-balancer-<version>/

The folder holds:

    ai-load-balancer-envoy.wasm     the module for stock Envoy
    ai-load-balancer-higress.wasm   the module for Higress
    SHA256SUMS                      both modules' SHA-256 (`sha256sum -c SHA256SUMS`)
    oci/                            the Higress image as an OCI layout, tag <version>-higress
                                    (push: skopeo copy oci:oci:<tag> docker://<registry>/ai-load-balancer:<tag>)
    manifests/                      the WasmPlugin and McpBridge manifests, their url the
                                    pushed image
    check-config.pyz                the config checker (python3 check-config.pyz MANIFEST | CONFIG)
    RESULTS.md                      the benchmark results index
    CHANGELOG.md, LICENSE, README.md

It refuses a version CHANGELOG.md has no section for. Both modules are built
anew from the working tree (build/make.py).
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipapp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "higress"))

import spec  # noqa: E402  (higress/spec.py: the project's version)

NAME = "ai-load-balancer"
MODULES = [f"{NAME}-envoy.wasm", f"{NAME}-higress.wasm"]
IMAGE_URL = re.compile(r"url: oci://\S+")
CHECKER_FILES = [("higress", "__init__.py"), ("higress", "check_config.py"),
                 ("higress", "wasmplugin.py")]


def changelog_has(version):
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        return any(line.strip() == f"## {version}" for line in f)


def build_modules(out_dir):
    subprocess.run([sys.executable, os.path.join(ROOT, "build", "make.py"), "--out", out_dir],
                   check=True)


def checksums(folder, names):
    lines = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {name}\n")
    with open(os.path.join(folder, "SHA256SUMS"), "w") as f:
        f.writelines(lines)


def manifests(folder, image):
    """The shipped manifests, each WasmPlugin's url set to `image`."""
    out = os.path.join(folder, "manifests")
    os.makedirs(out)
    higress = os.path.join(ROOT, "higress")
    for name in sorted(os.listdir(higress)):
        if name.endswith(".yaml"):
            with open(os.path.join(higress, name), encoding="utf-8") as f:
                text = IMAGE_URL.sub(f"url: oci://{image}", f.read())
            with open(os.path.join(out, name), "w", encoding="utf-8") as f:
                f.write(text)


def checker(folder):
    """higress/check_config.py as one runnable file, laid out like the
    repository inside (it finds the plugin under plugin/), with PyYAML's
    pure-Python part."""
    import yaml
    with tempfile.TemporaryDirectory() as tmp:
        for package in ("ai_load_balancer", "proxywasm"):
            shutil.copytree(os.path.join(ROOT, "plugin", package),
                            os.path.join(tmp, "plugin", package),
                            ignore=shutil.ignore_patterns("__pycache__"))
        os.makedirs(os.path.join(tmp, "higress"))
        for parts in CHECKER_FILES:
            shutil.copy(os.path.join(ROOT, *parts), os.path.join(tmp, *parts))
        shutil.copytree(os.path.dirname(yaml.__file__), os.path.join(tmp, "yaml"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
        with open(os.path.join(tmp, "__main__.py"), "w") as f:
            f.write("import sys\nfrom higress import check_config\n"
                    "sys.exit(check_config.main())\n")
        zipapp.create_archive(tmp, os.path.join(folder, "check-config.pyz"),
                              interpreter="/usr/bin/env python3")


def release(registry, out_root, version=None):
    """Builds the release folder; returns its path."""
    version = version or spec.project_version()
    if not changelog_has(version):
        raise SystemExit(f"release: CHANGELOG.md has no '## {version}' section")
    folder = os.path.join(out_root, f"{NAME}-{version}")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    with tempfile.TemporaryDirectory() as built:
        build_modules(built)
        for name in MODULES:
            shutil.copy(os.path.join(built, name), folder)
    checksums(folder, MODULES)
    tag = f"{version}-higress"
    subprocess.run([sys.executable, os.path.join(ROOT, "higress", "build_image.py"),
                    "--wasm", os.path.join(folder, f"{NAME}-higress.wasm"),
                    "--out", os.path.join(folder, "oci"), "--tag", tag,
                    "--version", version], check=True)
    manifests(folder, f"{registry.rstrip('/')}/{NAME}:{tag}")
    checker(folder)
    shutil.copy(os.path.join(ROOT, "bench", "results", "README.md"),
                os.path.join(folder, "RESULTS.md"))
    for name in ("CHANGELOG.md", "LICENSE", "README.md"):
        shutil.copy(os.path.join(ROOT, name), folder)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True,
                        help="where the Higress image is pushed, e.g. ghcr.io/acme: the "
                             "manifests' url becomes oci://<registry>/ai-load-balancer:<tag>")
    parser.add_argument("--out", default=os.path.join(ROOT, "release"))
    args = parser.parse_args(argv)
    folder = release(args.registry, args.out)
    print(f"release: {folder}")


if __name__ == "__main__":
    main()

"""Builds the Higress plugin image without Docker, as `hgctl plugin build -t image`
pushes it: an OCI image layout whose layers are Higress's metadata and then the
plugin.

    python build/make.py --target higress
    python higress/build_image.py --tag 0.1.0-higress        # -> dist/oci/
    skopeo copy oci:dist/oci:0.1.0-higress docker://<registry>/ai-load-balancer:0.1.0-higress
    # or: oras cp --from-oci-layout dist/oci:0.1.0-higress <registry>/ai-load-balancer:0.1.0-higress

Layers, in hgctl's order, each titled (org.opencontainers.image.title) with its
file name as oras does:

    spec.yaml       application/vnd.module.wasm.spec.v1+yaml        higress/spec.py, from
                                                                    the plugin's config fields
    README.md       application/vnd.module.wasm.doc.v1+markdown     README.md
    README_ZH.md    application/vnd.module.wasm.doc.v1.zh+markdown  README.zh-CN.md
    README_EN.md    application/vnd.module.wasm.doc.v1.en+markdown  README.md
    plugin.tar.gz   application/vnd.oci.image.layer.v1.tar+gzip     plugin.wasm

plugin.tar.gz is last: Istio's image fetcher (Higress's fork) takes the wasm
from the last layer of an OCI image. The config is `{}` of media type
application/vnd.unknown.config.v1+json, as oras 1.0 (hgctl's builder) writes it.
`--version` (default: pyproject.toml's) is spec.yaml's info.version.

Reproducible (fixed mtimes and owners, no timestamps): the same .wasm, READMEs,
config fields and version give the same manifest digest.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WASM = os.path.join(ROOT, "dist", "ai-load-balancer-higress.wasm")
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import spec  # noqa: E402  (higress/spec.py)

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.unknown.config.v1+json"
SPEC = "application/vnd.module.wasm.spec.v1+yaml"
DOC = "application/vnd.module.wasm.doc.v1+markdown"
DOC_ZH = "application/vnd.module.wasm.doc.v1.zh+markdown"
DOC_EN = "application/vnd.module.wasm.doc.v1.en+markdown"
WASM_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TITLE = "org.opencontainers.image.title"
README = os.path.join(ROOT, "README.md")
README_ZH = os.path.join(ROOT, "README.zh-CN.md")


def layer_tar(wasm_bytes):
    """An uncompressed tar with plugin.wasm, deterministic."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm_bytes), 0o644, 0
        tar.addfile(info, io.BytesIO(wasm_bytes))
    return buffer.getvalue()


def _blob(out_dir, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out_dir, "blobs", "sha256")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def layers(wasm_bytes, version, readme=README, readme_zh=README_ZH):
    """(file name, media type, bytes) of every layer, in order."""
    doc = _read(readme)
    return [
        ("spec.yaml", SPEC, spec.spec_yaml(version).encode()),
        ("README.md", DOC, doc),
        ("README_ZH.md", DOC_ZH, _read(readme_zh)),
        ("README_EN.md", DOC_EN, doc),
        ("plugin.tar.gz", WASM_LAYER, gzip.compress(layer_tar(wasm_bytes), mtime=0)),
    ]


def build(wasm_path, out_dir, tag, version=None, readme=README, readme_zh=README_ZH):
    """Writes the OCI layout; returns the manifest's descriptor."""
    version = version or spec.project_version()
    descriptors = [{"mediaType": media_type, **_blob(out_dir, data),
                    "annotations": {TITLE: name}}
                   for name, media_type, data in layers(_read(wasm_path), version,
                                                        readme, readme_zh)]
    config_desc = {"mediaType": CONFIG, **_blob(out_dir, b"{}")}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": config_desc, "layers": descriptors},
                          sort_keys=True).encode()
    manifest_desc = {"mediaType": MANIFEST, **_blob(out_dir, manifest),
                     "annotations": {"org.opencontainers.image.ref.name": tag}}
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f, sort_keys=True)
    with open(os.path.join(out_dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return manifest_desc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", default=WASM)
    parser.add_argument("--out", default=os.path.join(ROOT, "dist", "oci"))
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--version", default=None,
                        help="spec.yaml's info.version (default: pyproject.toml's)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.wasm):
        raise SystemExit(f"{args.wasm} is missing: run python build/make.py --target higress")
    descriptor = build(args.wasm, args.out, args.tag, args.version)
    print(f"OCI layout {args.out}, tag {args.tag}, manifest {descriptor['digest']}")


if __name__ == "__main__":
    main()

"""Builds the Higress plugin image without Docker: an OCI image layout holding
one layer with plugin.wasm (what `docker build -f higress/Dockerfile` makes).

    python build/make.py --target higress
    python higress/build_image.py --tag 0.1.0-higress        # -> dist/oci/
    skopeo copy oci:dist/oci:0.1.0-higress docker://<registry>/ai-load-balancer:0.1.0-higress
    # or: oras cp --from-oci-layout dist/oci:0.1.0-higress <registry>/ai-load-balancer:0.1.0-higress

The layer is reproducible (fixed mtimes and owners): the same .wasm gives the
same image digest.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(ROOT, "dist", "ai-load-balancer-higress.wasm")


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


def build(wasm_path, out_dir, tag):
    """Writes the OCI layout; returns the manifest's descriptor."""
    with open(wasm_path, "rb") as f:
        tar = layer_tar(f.read())
    layer = gzip.compress(tar, mtime=0)
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(out_dir, layer)}
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    }, sort_keys=True).encode()
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(out_dir, config)}
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config_desc, "layers": [layer_desc]}, sort_keys=True).encode()
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **_blob(out_dir, manifest),
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
    args = parser.parse_args(argv)
    if not os.path.exists(args.wasm):
        raise SystemExit(f"{args.wasm} is missing: run python build/make.py --target higress")
    descriptor = build(args.wasm, args.out, args.tag)
    print(f"OCI layout {args.out}, tag {args.tag}, manifest {descriptor['digest']}")


if __name__ == "__main__":
    main()

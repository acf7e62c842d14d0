"""Container images for the engine tests, made with the standard library from
a busybox root filesystem: no registry, no network.

- rootfs_tarball(): a plain tar of the root filesystem (for `docker import`,
  `podman import`);
- oci_image_tarball(): an OCI image layout in a tar (for `ctr images import`):
  one uncompressed layer, a config whose diff_ids name it, a manifest, and an
  index.json whose annotations give the image its name.
"""

import hashlib
import io
import json
import os
import tarfile


def _add_tree(archive, root):
    """Add root's contents with fixed owners and times, sorted, so the same
    tree always gives the same bytes."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(directory, name)
            arcname = os.path.relpath(path, root)
            info = archive.gettarinfo(path, arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isreg():
                with open(path, "rb") as f:
                    archive.addfile(info, f)
            else:
                archive.addfile(info)


def rootfs_tarball(rootfs, out):
    with tarfile.open(out, "w") as archive:
        _add_tree(archive, rootfs)
    return out


def _blob(archive, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def oci_image_tarball(rootfs, out, name, cmd=("sh",)):
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w") as layer:
        _add_tree(layer, rootfs)
    layer_bytes = layer_buffer.getvalue()
    config = {
        "architecture": _goarch(), "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]},
    }
    with tarfile.open(out, "w") as archive:
        layer_desc = _blob(archive, layer_bytes, "application/vnd.oci.image.layer.v1.tar")
        config_desc = _blob(archive, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = _blob(archive, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}
        manifest_desc["platform"] = {"architecture": _goarch(), "os": "linux"}
        for member, data in (("oci-layout", {"imageLayoutVersion": "1.0.0"}),
                             ("index.json", {"schemaVersion": 2, "manifests": [manifest_desc]})):
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return out


def _goarch():
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x"}.get(machine, machine)

"""Where an instance's image comes from: built here offline, or SWE-bench's published image when pullable.

`--image-source`:
- `build` (default): the layered offline images of images.py;
- `official`: SWE-bench's instance image under its official name (`swebench/sweb.eval.x86_64.ID:latest`, with
  `__` written `_1776_`), pulled from the configured registry (`--registry HOST[:PORT]`, else Docker's
  default); a failed pull is an InfraError naming the image;
- `auto`: the official image when it can be pulled (or is already here), else the offline build.

Official images keep conda at /opt/miniconda3 and the repository at /testbed, so the dataset's eval script
runs on them unchanged, as on ours.

>>> official_name("astropy__astropy-12907")
'swebench/sweb.eval.x86_64.astropy_1776_astropy-12907:latest'
>>> ImageSource.parse("auto", "127.0.0.1:5000").ref("swebench/x:latest")
'127.0.0.1:5000/swebench/x:latest'
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cwm_envs.errors import InfraError, UsageError

SOURCES = ("build", "official", "auto")
NAMESPACE = "swebench"


def official_name(instance_id: str, namespace: str = NAMESPACE, arch: str = "x86_64", tag: str = "latest") -> str:
    """The official instance image name of SWE-bench (its `get_instance_image_key` naming rule)."""
    return f"{namespace}/sweb.eval.{arch}.{instance_id.replace('__', '_1776_').lower()}:{tag}"


def official_image(instance) -> str:
    """The name for an instance: the dataset row's `image` field when it has one, else the naming rule."""
    if getattr(instance, "image", ""):
        name = instance.image
        return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
    return official_name(instance.instance_id)


@dataclass(frozen=True)
class ImageSource:
    """Which images an evaluation uses, and the registry official ones are pulled from."""

    kind: str = "build"
    registry: str = ""                     # HOST[:PORT]; "" = Docker's default registry

    @classmethod
    def parse(cls, kind: str | None, registry: str | None = None) -> "ImageSource":
        kind = kind or "build"
        if kind not in SOURCES:
            raise UsageError(f"--image-source must be one of {', '.join(SOURCES)}, got {kind!r}")
        registry = (registry if registry is not None else os.environ.get("CWM_SWE_REGISTRY", "")).strip().rstrip("/")
        if registry and ("/" in registry or " " in registry):
            raise UsageError(f"--registry takes HOST[:PORT], got {registry!r}")
        return cls(kind, registry)

    def ref(self, name: str) -> str:
        """The reference to pull `name` by from this registry."""
        return f"{self.registry}/{name}" if self.registry else name


def pull_official(instance, source: ImageSource, client, log: Callable[[str], None] = lambda _m: None,
                  timeout: float = 1800.0) -> str:
    """The official image of `instance`, pulled when not here yet -> its local name. Raises InfraError."""
    import docker.errors

    name = official_image(instance)
    ref = source.ref(name)
    try:
        client.images.get(name)
        return name
    except docker.errors.ImageNotFound:
        pass
    repo, _, tag = ref.rpartition(":")
    log(f"pulling {ref}")
    t = time.perf_counter()
    try:
        image = client.images.pull(repo, tag=tag)
    except docker.errors.APIError as exc:
        raise InfraError(f"cannot pull the official image {ref} ({exc.explanation or exc})") from None
    except Exception as exc:                       # connection refused, timeouts
        raise InfraError(f"cannot pull the official image {ref} ({type(exc).__name__}: {exc})") from None
    if ref != name:
        image.tag(*name.rsplit(":", 1))            # known by its official name from now on
    log(f"pulled {ref} in {time.perf_counter() - t:.1f} s")
    return name


def instance_image(instance, repos_dir: str | Path | None, source: ImageSource | str = "build", *, client=None,
                   log: Callable[[str], None] = lambda _m: None, timings: dict | None = None) -> str:
    """The image an instance is evaluated in, from `source` (see the module docstring) -> its tag."""
    from cwm_envs.swe.images import _client, build_instance_image

    source = source if isinstance(source, ImageSource) else ImageSource.parse(source)
    if source.kind == "build":
        return build_instance_image(instance, repos_dir, client=client, log=log, timings=timings)
    client = client or _client()
    t = time.perf_counter()
    try:
        tag = pull_official(instance, source, client, log)
    except InfraError as exc:
        if source.kind == "official":
            raise
        log(f"{instance.instance_id}: {exc}; building it instead")
        return build_instance_image(instance, repos_dir, client=client, log=log, timings=timings)
    if timings is not None:
        timings.update(env_s=0.0, instance_s=round(time.perf_counter() - t, 2), notes=["official image"],
                       python="official", suite="official", tag=tag, source="official")
    return tag

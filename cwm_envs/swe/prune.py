"""`cwm swe prune`: remove the SWE images this project built (instance, environment, tools layers).

By age (`--older-than DAYS`, the image's creation time), by run (`--run DIR`: the images a `cwm swe validate
--out DIR` used, listed in DIR/images.json) or all of them. Only images labelled by images.py are touched
(`cwm-envs.image=swe`); the offline base images and anything else on the engine stay. An image a container
still uses is skipped and said so, never forced away from under a running evaluation.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Callable

from cwm_envs.errors import UsageError

LABEL = "cwm-envs.image=swe"
LAYER_ORDER = {"instance": 0, "env": 1, "tools": 2}      # children before the layers they are built on


def _created(image) -> dt.datetime:
    text = image.attrs.get("Created", "")[:26].rstrip("Z")
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def select(images: list, *, older_than_days: float | None = None, run_tags: set[str] | None = None,
           everything: bool = False, now: dt.datetime | None = None) -> list:
    """The images a prune removes, children first (instance, then environment, then tools layers)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    chosen = []
    for im in images:
        tags = set(im.tags)
        if everything:
            chosen.append(im)
        elif run_tags is not None and tags & run_tags:
            chosen.append(im)
        elif older_than_days is not None and (now - _created(im)).total_seconds() > older_than_days * 86400:
            chosen.append(im)
    return sorted(chosen, key=lambda im: LAYER_ORDER.get((im.labels or {}).get("cwm-envs.swe.layer", ""), 0))


def prune(*, older_than_days: float | None = None, run_dir: str | Path | None = None, everything: bool = False,
          dry_run: bool = False, client=None, log: Callable[[str], None] = lambda _m: None) -> tuple[list[str], int]:
    """Remove the selected SWE images -> (tags removed, bytes freed as Docker reports the images' sizes)."""
    import docker.errors

    if sum(x is not None and x is not False for x in (older_than_days, run_dir, everything or None)) != 1:
        raise UsageError("give exactly one of --older-than DAYS, --run DIR, --all")
    if older_than_days is not None and older_than_days < 0:
        raise UsageError("--older-than must be zero or more days")
    run_tags = None
    if run_dir is not None:
        listing = Path(run_dir) / "images.json"
        if not listing.exists():
            raise UsageError(f"{listing}: no such file (a `cwm swe validate --out DIR` run writes it)")
        try:
            run_tags = set(json.loads(listing.read_text()))
        except (json.JSONDecodeError, TypeError):
            raise UsageError(f"{listing}: not a JSON list of image tags") from None
    if client is None:
        from cwm_envs.swe.images import _client

        client = _client()
    images = client.images.list(filters={"label": LABEL})
    removed, freed = [], 0
    for im in select(images, older_than_days=older_than_days, run_tags=run_tags, everything=everything):
        name = (im.tags or [im.short_id])[0]
        if dry_run:
            removed.append(name)
            freed += im.attrs.get("Size", 0)
            continue
        try:
            for tag in im.tags or [im.id]:
                client.images.remove(tag, noprune=False)
            removed.append(name)
            freed += im.attrs.get("Size", 0)
            log(f"removed {name}")
        except docker.errors.APIError as exc:        # in use by a container, or a child image remains
            log(f"kept {name}: {exc.explanation or exc}")
    return removed, freed

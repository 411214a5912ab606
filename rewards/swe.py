"""SWE rewards: +1 when the harness resolves the task, -1 otherwise, with optional SWE-RL-style shaping.

Shaping (off by default) gives an unresolved patch `-1 + weight * similarity`, where similarity is the
difflib ratio between the submitted and the gold change of each file the gold patch touches, averaged
over those files (SWE-RL; CWM keeps it as an auxiliary outcome). Files only the submission touches are
ignored; a gold file the submission leaves alone scores 0.
"""
from __future__ import annotations

import difflib
import re

from rewards.base import RewardResult

_FILE = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.M)


def file_changes(patch: str) -> dict[str, str]:
    """A unified diff split per file: {path: its hunks}, headers and index lines dropped.

    >>> file_changes("diff --git a/x.py b/x.py\\nindex 1..2 100644\\n--- a/x.py\\n+++ b/x.py\\n@@ -1 +1 @@\\n-a\\n+b\\n")
    {'x.py': '@@ -1 +1 @@\\n-a\\n+b'}
    """
    heads = list(_FILE.finditer(patch or ""))
    out: dict[str, str] = {}
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(patch)
        body = patch[head.end():end]
        at = body.find("\n@@")
        hunks = body[at + 1:].strip() if at != -1 else ""
        rename = f"rename {head.group(1)} -> {head.group(2)}\n" if head.group(1) != head.group(2) else ""
        out[head.group(1)] = (rename + hunks).strip()
    return out


def patch_similarity(pred: str | None, gold: str) -> float:
    """Mean difflib ratio of the per-file changes, over the files of the gold patch (0 when none match).

    >>> gold = "diff --git a/x.py b/x.py\\n--- a/x.py\\n+++ b/x.py\\n@@ -1 +1 @@\\n-return a - b\\n+return a + b\\n"
    >>> patch_similarity(gold, gold), patch_similarity(None, gold), patch_similarity("", gold)
    (1.0, 0.0, 0.0)
    >>> 0.5 < patch_similarity(gold.replace("a + b", "b + a"), gold) < 1.0
    True
    """
    gold_files, pred_files = file_changes(gold), file_changes(pred or "")
    if not gold_files:
        return 0.0
    ratios = [difflib.SequenceMatcher(None, pred_files.get(f, ""), change, autojunk=False).ratio()
              if pred_files.get(f) and change else 0.0 for f, change in gold_files.items()]
    return sum(ratios) / len(ratios)


def swe_reward(resolved: bool, pred_patch: str | None, gold_patch: str, similarity_weight: float = 0.0,
               reason: str = "") -> RewardResult:
    """+1 if resolved; else -1, plus `similarity_weight * patch_similarity` when shaping is on.

    >>> swe_reward(True, "diff ...", "diff ...").value
    1.0
    >>> swe_reward(False, None, "diff ...", reason="no submission").value
    -1.0
    >>> gold = "diff --git a/x.py b/x.py\\n@@ -1 +1 @@\\n-a\\n+b\\n"
    >>> swe_reward(False, gold, gold, similarity_weight=0.5).value
    -0.5
    """
    if not 0.0 <= similarity_weight < 2.0:
        raise ValueError("similarity_weight must be in [0, 2): an unresolved patch must score below a resolved one")
    outcomes = {"resolved": bool(resolved), "submitted": pred_patch is not None}
    if resolved:
        return RewardResult(1.0, outcomes, "resolved")
    value = -1.0
    if similarity_weight and pred_patch:
        sim = patch_similarity(pred_patch, gold_patch)
        outcomes["similarity"] = round(sim, 4)
        value += similarity_weight * sim
    return RewardResult(value, outcomes, reason or "not resolved")

"""SWE repositories in Docker: task rows, layered offline images, and a SWE-bench-compatible grader.

The pieces an environment or a runner needs:

>>> from cwm_envs.swe import load_instances, build_instance_image, grade       # doctest: +SKIP
>>> inst = load_instances("SWE-bench_Verified_test.parquet", ["psf__requests-1142"])[0]
>>> tag = build_instance_image(inst, "repos/")           # cached by content hash, built offline
>>> with DockerSandbox(tag, workdir="/testbed", **REPO_SANDBOX) as sb:   # cwm_envs.sandbox.docker_backend
...     report = grade(inst, sb, patch)[inst.instance_id]   # official report shape; report["resolved"]

`run_evaluation` does the same for a whole predictions file (workers, retries, resumable, run summary).
"""
from cwm_envs.swe.dataset import SWEInstance, gold_predictions, load_instances, load_predictions
from cwm_envs.swe.harness import grade
from cwm_envs.swe.images import build_env_image, build_instance_image
from cwm_envs.swe.run import InstanceResult, evaluate_instance, run_evaluation

__all__ = ["SWEInstance", "load_instances", "load_predictions", "gold_predictions", "build_instance_image",
           "build_env_image", "grade", "evaluate_instance", "run_evaluation", "InstanceResult"]

"""cwm-envs: Gymnasium environments with verifiable rewards (math, code, execution traces, SWE repositories).

Importing this package registers every environment id in the `cwm` namespace.
"""
from cwm_envs.registration import ENVS, register_envs
from cwm_envs.tasks import Task

register_envs()

__all__ = ["ENVS", "Task"]
__version__ = "0.1.0"

"""The environments. Each module is one family; `cwm_envs.registration` lists their ids."""

"""Task sources: loaders for benchmark files and seeded generators, each yielding `cwm_envs.tasks.Task`."""

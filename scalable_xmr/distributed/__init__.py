"""Ray, for the jobs: attach to a cluster (cluster), run tasks in actors (actors), show progress
(progress). The SDML and branch jobs both run through :func:`~scalable_xmr.distributed.actors.run_actors`."""

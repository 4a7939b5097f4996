"""The host side: what plans a run and drives the engine — Hub pins and remote data,
publishing, host facts and preflight, where a command runs, cloud launch files,
reproducing a run. Nothing here runs in the container; the trainer imports none of it."""

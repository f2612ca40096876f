"""The run store: run directories (run_store), the fixed projection P (projection), and runs on
object storage (remote: imported here so that every process that writes run files uploads those
of an object-storage run's mirror)."""

from scalable_xmr.store import remote as remote  # noqa: F401 - registers the upload hook

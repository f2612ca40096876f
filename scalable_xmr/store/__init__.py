"""The run store: run directories (run_store) and the fixed projection P (projection)."""

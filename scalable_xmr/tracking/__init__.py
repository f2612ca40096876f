"""MLflow, on the driver only (tracker), and the plots it logs (plots)."""

"""The run lifecycle every training job shares (session.py): lock, plan, the resume check,
run.json, the MLflow parent run, the actors, finish or fail."""

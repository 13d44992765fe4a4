"""Serving: the tuned ensemble as an MLflow pyfunc model and the `noisytail predict` path."""

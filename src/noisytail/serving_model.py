"""MLflow "models from code" entry point of the served ensemble: MLflow runs this file to build
the model (see noisytail.serving), so nothing is pickled."""

import mlflow

from noisytail.serving import EnsembleModel

mlflow.models.set_model(EnsembleModel())

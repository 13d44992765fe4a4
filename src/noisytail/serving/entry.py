"""MLflow "models from code" entry point of the served ensemble: MLflow runs this file to build
the model (see noisytail.serving.model), so nothing is pickled."""

import mlflow

from noisytail.serving.model import EnsembleModel

mlflow.models.set_model(EnsembleModel())

"""The model's tooling: training, evaluation and measurement here, training on a lent GPU machine
and bringing its weights home.

Nothing here imports TensorFlow at module level: :mod:`appliance.ml.gpu_train` runs where only
JAX is installed, and :mod:`appliance.ml.gpu_import` loads TensorFlow only when it runs.
"""

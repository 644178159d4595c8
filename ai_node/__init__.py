"""The AI node: the models and their registry, the inference worker and analysis pipeline,
the SR writers, training, synthetic CT studies and the retraining pipeline.

Nothing here imports TensorFlow at import time; models load lazily in the worker.
"""

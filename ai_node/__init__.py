"""The AI node: synthetic CT studies, and (in later work) models, the inference worker,
the SR writer, training and the retraining pipeline.

Nothing here imports TensorFlow at import time; models load lazily in the worker.
"""

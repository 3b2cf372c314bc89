"""What both sides use: the contracts between the stages (the HDF5 layout, the timing log, the run
directory, the training configuration, the dataset identity, the representation) and small helpers
(one-line errors, the logger, atomic files). It imports nothing else of the package, and no TensorFlow,
Horovod or Keras (pyproject.toml, [tool.importlinter]).
"""

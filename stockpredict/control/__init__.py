"""The login node: rendering job scripts, submitting them (sbatch or submitit), following and listing
jobs, the demo, and the environment's setup. No TensorFlow, Horovod or Keras, so a login node renders
and submits in a second (pyproject.toml, [tool.importlinter]).
"""

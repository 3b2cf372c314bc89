"""Inside a job: the trainer's entry point and what it runs in each rank (the epoch loop, checkpoints,
the preemption protocol, the reader, the model, the engines), the batch shell's helpers
(`checkpoints guard`), forecasts, and the measuring programs (the allreduce benchmark, the interleaved
1-vs-N-rank probe, the GPU preflight). It never imports the login node's side or the report.
"""

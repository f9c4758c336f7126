"""Running many runs: one ``peft-bench run`` command (runs side by side on idle cores, one progress line) and
SLURM sweeps through submitit (job arrays, multi-GPU jobs, preemption and resume).

May import everything but ``cli``.
"""

"""Run a study as N cooperating JAX processes on this machine (multi-host on one host; logic in
`fairprune_jax.launch`, same as ``fairprune-launch``).

    python -m experiments.launch --num_processes=2 -- --config=mnist:smoke
    python -m experiments.launch --num_processes=2 --study=bias -- --config=planted_mnist:smoke

Output of process i is prefixed with ``[pi]``; process 0 writes the workdir; rerunning the same command resumes.
"""
from fairprune_jax import cli

if __name__ == "__main__":
    cli.launch()

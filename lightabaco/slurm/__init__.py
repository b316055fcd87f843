"""Slurm pilots (issue 12): `lightabaco serve --slurm` submits pilot jobs with `sbatch` that run worker
hosts on compute nodes, sized by queue depth within the operator's bounds, and cancels idle ones.

    identity.py   host_identity(): which host, node and Slurm job a worker host runs in
    pilots.py     PilotManager: queue depth -> sbatch / scancel (runs inside `serve --slurm`)
    pilot.py      `python -m lightabaco.slurm.pilot`: what a pilot job runs on its node

Everything runs as the user: no daemon besides Slurm's own, no root.
"""

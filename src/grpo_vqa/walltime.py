"""The walltime warning shared by the launcher (which passes it on), the trainers (which checkpoint and stop on
it) and the command-line entry (which turns the stop into its exit status)."""

from __future__ import annotations

import signal

#: The walltime warning: profiles/slurm asks SLURM for ``--signal=URG@<s>``, sent to every process of the job's
#: steps <s> seconds before the time limit. URG, not USR1: Snakemake's job process and the rule's bash shell
#: in the same step ignore URG by default, while USR1 would kill them (and with them the step) before the
#: checkpoint is written; ``B:USR1`` goes to the batch shell only, which dies of it.
WALLTIME_SIGNAL = signal.SIGURG
#: Exit status after the walltime checkpoint (EX_TEMPFAIL): the job failed for now; a retry resumes it.
WALLTIME_EXIT = 75


class WalltimeStop(Exception):
    """Training stopped at the walltime warning after saving a complete checkpoint (exit with WALLTIME_EXIT)."""

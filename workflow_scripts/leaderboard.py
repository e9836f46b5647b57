"""The zoo leaderboard: tables and figures (logic in ntkbench.stages.leaderboard)."""
from ntkbench.stages.common import job_from_snakemake
from ntkbench.stages.leaderboard import LeaderboardJob, leaderboard_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
leaderboard_stage(job_from_snakemake(LeaderboardJob, sm))

"""Names of the files the job side writes into each job's ``.launcher/`` dir, read back by the
launching side and the pull daemon: one definition for both sides."""

LAUNCHER_DIR = ".launcher"  # in every job's output dir, next to Hydra's .hydra/
RESULT_FILE = "result.pkl"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
PID_FILE = "pid"
CODE_FILE = "code.json"  # the code the job ran (launcher_core.snapshots.code_record)
EXIT_FILE = "slurm_exit"  # slurm: the job's exit code (batch script, or the packed task runner)

# written by the detached runner (runtime/runner.py) on SSH hosts
RUNNER_PID_FILE = PID_FILE
EXIT_STATUS_FILE = "exit_status"
CANCELLED_FILE = "cancelled"
CLEANUP_FILE = "cleanup"
BATCH_FILE = "batch"  # id of the batch that owns the job now (a relaunch may take it over)
BOOT_ID_FILE = "boot_id"  # the host's boot id when the job started: another one now means a reboot

# lines the runner prints to say it took a job
STARTED_LINE = "HRL-STARTED"
ATTACHED_LINE = "HRL-ATTACHED"

"""Re-export of :mod:`pythoncoder.checkpoint` (the checkpoint layer below train/ and infer/)."""

from pythoncoder.checkpoint import (  # noqa: F401
    MODEL_CONFIG_FILE,
    RUN_FILE,
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    RunLock,
    RunLockError,
    read_run_file,
    restore_model,
    write_run_files,
)

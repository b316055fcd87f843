"""Worker processes and their supervisor: claim a message, run it in the sandbox, record, acknowledge."""

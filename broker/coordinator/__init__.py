"""The coordinator: admission, the job ledger, scheduling and dispatch, cloud offload, finals."""

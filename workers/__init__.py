"""Ray actors for distributed ComPO: thin wrappers around workers.worker (needs ray)."""

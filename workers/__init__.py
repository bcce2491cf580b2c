"""Ray actors for distributed ComPO: thin wrappers around compo.worker (needs ray)."""

"""RestoreLCC: restore pruned LLMs by lost-component compensation."""

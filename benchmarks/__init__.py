"""The benchmark suite (scripts/bench): the service measured against its own stack's limits,
side by side in one run, so that ratios hold on a noisy shared machine."""

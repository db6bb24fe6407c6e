"""The planner: fewest GPUs (workers x GPUs per worker) that meet the SLOs, by simulation."""

"""The open-loop trace replayer: datasets -> arrival schedule -> streaming client -> records."""

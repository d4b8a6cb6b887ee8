"""Models: a registry of classical and deep models by stable name."""

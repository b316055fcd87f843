"""Core services: the rules of Abaco (validation, permissions, lifecycle, message to execution, cron, events)."""

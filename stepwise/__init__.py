"""Stepwise: schedule multi-step agent automations and run them reliably."""

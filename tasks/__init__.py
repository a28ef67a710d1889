"""The workers on Dramatiq: the broker, the actors, the runner and the agent client.

The layers above reach the queue through `tasks/send.py` only.
"""

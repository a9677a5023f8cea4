"""Webhook notifications: the deliveries the store queues with each event (see
store/deliveries.py), sent by a worker in every replica, signed as Standard Webhooks."""

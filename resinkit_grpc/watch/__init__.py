"""WatchTaskEvents: one tail per process reads task_events in event_id order and fans each
batch out to the subscriptions whose filters match."""

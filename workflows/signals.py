from django.dispatch import Signal

# Sent (after commit) when a work item reaches completed or failed. kwargs: work_item.
# The engine announces; intakes listens (callbacks). workflows never imports intakes.
work_item_finished = Signal()

# Sent (after commit) once for a batch of items that finished together, BEFORE
# work_item_finished for each of them. kwargs: work_items. A receiver that handles the batch
# at once may mark each item (e.g. an attribute) so its per-item receiver skips it.
work_items_finished = Signal()

# Sent by each qcluster's ticker on every tick (kwargs: now), after due work items were
# woken. Other apps wake their own due work here (callback deliveries) without the
# engine importing them. Receivers must be quick and must not raise.
tick = Signal()

# Sent by `manage.py qcluster` in its main process once the cluster runs (kwargs: none).
# A receiver may start a service there (the callback dispatcher) and return an object with
# `stop()` (begin stopping, never blocks) and `join(grace) -> bool` (True: stopped cleanly
# within grace seconds); qcluster stops it with the cluster, within the same grace period.
cluster_serving = Signal()

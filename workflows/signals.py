from django.dispatch import Signal

# Sent (after commit) when a work item reaches completed or failed. kwargs: work_item.
# The engine announces; intakes listens (callbacks). workflows never imports intakes.
work_item_finished = Signal()

# Sent by each qcluster's ticker on every tick (kwargs: now), after due work items were
# woken. Other apps wake their own due work here (callback deliveries) without the
# engine importing them. Receivers must be quick and must not raise.
tick = Signal()

from django.dispatch import Signal

# Sent (after commit) when a work item reaches completed or failed. kwargs: work_item.
# The engine announces; intakes listens (callbacks). workflows never imports intakes.
work_item_finished = Signal()

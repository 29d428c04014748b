"""The fanbase example: follow/unfollow notifications (``python -m examples.fanbase``)."""

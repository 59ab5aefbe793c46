"""Listeners for the engine's signals. Each receiver calls one service."""

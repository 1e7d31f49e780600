"""Searching: the space, the score, the Optuna study, confirmation of finalists, `tune`."""

"""Evaluation internals: task prompts (tasks), batched log-likelihood (scoring), perplexity.

The public entry points live in ``restorelcc.evaluate``.
"""

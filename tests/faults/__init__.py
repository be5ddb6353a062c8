"""The fault suite: an operator's bad days, each with its pass criterion (issue #9)."""

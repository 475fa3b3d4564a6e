"""Vertices for the run-time context tests: each returns the context it saw.

``show`` returns ``dict(context)``; ``publish`` returns the context it saw, then
publishes ``key = value``; ``lookup`` returns ``context[key]`` (raising as the lookup
does: KeyError, or AmbiguousContextError when parallel origins disagree).
"""

from __future__ import annotations


def show(context):
    return dict(context)


def publish(context, key, value):
    seen = dict(context)
    context.publish(key, value)
    return seen



def lookup(context, key):
    return context[key]


def publish_unjsonable(context):
    context.publish("handle", object())
    return 1


def collect(inputs):
    """The report vertex: every parent's output by name."""
    return dict(inputs)

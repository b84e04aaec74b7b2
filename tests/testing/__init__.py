"""Tests of the shipped test tools: fake providers, faults, the pytest plugin."""

"""Receivers: the components that bring data into the pipelines, built on receiver/."""

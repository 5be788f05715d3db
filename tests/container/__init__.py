"""Tests against a real container engine (podman); see conftest.py."""

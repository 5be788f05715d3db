"""The SSH launcher against real sshd "machines" (a package, so its conftest shadows no other)."""

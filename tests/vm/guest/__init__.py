"""Tests that run only inside the VM guest (collected there by tests/vm/test_vm.py)."""

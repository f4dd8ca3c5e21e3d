"""Protocol drivers: one small module per USB Ethernet class on one shared core."""

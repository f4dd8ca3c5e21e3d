"""The host side: the TAP port (every frame to and from the host), rtnetlink, GRO, the link reconciler."""

"""The application: command line, runner, event loop, control socket, configuration, systemd and logs."""

"""The admin console: a database the proxy answers itself (SHOW POOLS, PAUSE, BAN, ...).

commands.py reads the commands, show.py builds the SHOW results, actions.py carries out the
others, settings.py handles SET, console.py is the client's session."""

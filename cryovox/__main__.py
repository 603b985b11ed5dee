from cryovox.cli import entry

entry()

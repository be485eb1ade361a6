"""Online side of oodgate: loads exported graphs and scores images. Never imports ``training``."""

"""Offline side of oodgate: flow layers, architectures, data, training, export.

Never imported by ``service``: the serving process loads exported graphs only.
"""

"""One-off measurements behind figures in docs/: run each as ``python -m scripts.NAME`` from the checkout."""

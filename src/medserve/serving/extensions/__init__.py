"""Built-in serving extensions (see ``medserve.serving.extension``), found through the
``medserve.extensions`` entry points like any other."""

"""jinja2 templates of the generated C runtime and the C project around it."""

"""Built-in lrag-framework plugins."""

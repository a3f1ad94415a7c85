"""The dashboard tabs, one module per tab."""

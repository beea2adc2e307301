"""bcoder: value-based deep RL for program synthesis (B-Coder, ICLR 2024)."""

__version__ = "0.1.0"

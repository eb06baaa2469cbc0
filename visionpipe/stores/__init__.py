"""Where state lives: label records, iterations, predictions, quarantine."""

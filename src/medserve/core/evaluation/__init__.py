"""Clinical evaluation metrics and reports: shared by training (cross-validation, the
held-out test) and evaluation (a registered version on a labelled file)."""

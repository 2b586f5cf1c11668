"""What the project shows a person: the lab figures, the evaluation report and the sweep report."""

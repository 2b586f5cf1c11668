"""Basics every part of the project shares and that import nothing heavier than the standard library."""

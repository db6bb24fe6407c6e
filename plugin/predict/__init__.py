"""Output-length prediction from the prompt text: a small scikit-learn model shipped with the package.

Kept out of aladdin.plugin.core because it reads a file and needs the optional ``predict`` extra.
"""

"""Core: what every stage uses — errors, progress lines, the distributed context, the model and source
registry, option metadata, recipes, Hub retries, fingerprints and the array-column format.
"""

"""Commands that run several stages: ``build`` (score → select → attach → package, resumable) and the
embedded ``demo`` (build → train → sample → evaluate).
"""

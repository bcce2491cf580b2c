"""compo/eval"""

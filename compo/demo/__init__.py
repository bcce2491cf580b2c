"""compo/demo"""

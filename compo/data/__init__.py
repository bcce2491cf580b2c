"""compo/data"""
